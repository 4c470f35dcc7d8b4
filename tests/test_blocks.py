"""Model building blocks."""

import torch

from stagekit.models.blocks import Dropout


def test_dropout_drops_p_of_the_units_and_keeps_the_expectation():
    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.ones(400, 501, requires_grad=True)  # an odd number of units: the mask is cut from pairs of keys
    y = layer(x)
    dropped = (y == 0).float()
    assert abs(dropped.mean().item() - 0.3) < 0.005
    assert abs(dropped[:, 0].mean().item() - 0.3) < 0.07 and abs(dropped[:, -1].mean().item() - 0.3) < 0.07
    assert abs(y.mean().item() - 1.0) < 0.01
    torch.testing.assert_close(y[y > 0], torch.full_like(y[y > 0], 1 / 0.7))
    y.sum().backward()  # the gradient flows through the kept units only
    torch.testing.assert_close(x.grad, (y > 0).float() / 0.7)
    assert not torch.equal(layer(x), y)  # a fresh mask every call
    assert torch.equal(layer.eval()(x), x)
