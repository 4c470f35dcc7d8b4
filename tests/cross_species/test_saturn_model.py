"""Groundwork for cross-species integration: the SATURN-style model on synthetic two-species counts."""

import numpy as np
import torch

from stagekit.models.macrogenes import initial_log_weights
from stagekit.models.saturn import SaturnModel


def two_species(n_cells=120, n_genes=40, n_types=3, seed=0):
    """Counts of two species whose genes are orthologs in shuffled order; protein vectors share a base per pair."""
    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.5, 1.0, (n_types, n_genes)) + 0.05
    base = rng.normal(size=(n_genes, 16))
    species = []
    for s in range(2):
        order = rng.permutation(n_genes)  # each species lists its genes differently
        types = rng.integers(0, n_types, n_cells)
        rates = programs[types][:, order] * (1.0 + 0.3 * s)  # a species-wide scale shift
        counts = rng.poisson(rates * 5).astype(np.float32)
        protein = base[order] + rng.normal(0, 0.1, (n_genes, 16))
        species.append((torch.from_numpy(counts), types, protein.astype(np.float32)))
    return species


def _model(data, seed=0):
    protein = np.concatenate([p for _, _, p in data])
    log_w, _ = initial_log_weights(protein, 12, seed=seed)
    torch.manual_seed(seed)
    return SaturnModel([len(p) for _, _, p in data], torch.from_numpy(log_w), n_hidden=32, n_embed=8,
                       protein=torch.from_numpy(protein)), protein


def test_eval_is_deterministic_and_decoder_uses_species():
    data = two_species()
    model, _ = _model(data)
    x = data[0][0][:5]
    model.train()
    assert not torch.equal(model.embed(x, 0), model.embed(x, 0))  # macrogene dropout in training
    model.eval()
    assert torch.equal(model.embed(x, 0), model.embed(x, 0))  # and not in eval
    mu, _ = model.decode(model.embed(x, 0), 0, torch.full((5, 1), 100.0))
    assert mu.shape == (5, 40) and torch.allclose(mu.sum(1), torch.full((5,), 100.0))


def test_decoder_is_conditioned_on_the_true_species():
    """Two species with identical genes and weights decode differently only through the species one-hot."""
    log_w = torch.randn(6, 4).repeat(2, 1)
    z, library = torch.randn(3, 8), torch.full((3, 1), 50.0)
    for conditioned in (True, False):
        torch.manual_seed(0)
        model = SaturnModel([6, 6], log_w, n_hidden=16, n_embed=8, condition_on_species=conditioned).eval()
        with torch.no_grad():  # make the two species' heads identical too
            model.log_theta[1].copy_(model.log_theta[0])
            model.zi_heads[1].load_state_dict(model.zi_heads[0].state_dict())
        same = torch.allclose(model.decode(z, 0, library)[0], model.decode(z, 1, library)[0])
        assert same is (not conditioned)


def test_training_lowers_the_loss_and_aligns_cell_types_across_species():
    data = two_species()
    model, protein = _model(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        partners = torch.randint(0, len(protein), (len(protein),), generator=generator)
        out = model([x for x, _, _ in data], partners)
        total = out["nll_0"] + out["nll_1"] + 0.2 * out["protein_similarity"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        za, zb = (model.embed(x, s).numpy() for s, (x, _, _) in enumerate(data))
    ta, tb = data[0][1], data[1][1]
    # species B cells take the label of their nearest species-A cell: well above chance (1/3)
    nearest = ((zb[:, None, :] - za[None]) ** 2).sum(-1).argmin(1)
    assert (ta[nearest] == tb).mean() > 0.8


def test_embedding_similarity_loss_matches_cosine_similarity_in_value_and_gradient():
    from torch.nn import functional as F

    from stagekit.losses.saturn import embedding_similarity_loss

    generator = torch.Generator().manual_seed(0)
    log_weights = torch.randn(30, 8, generator=generator, dtype=torch.float64)
    protein = torch.randn(30, 5, generator=generator, dtype=torch.float64)
    partners = torch.randint(0, 30, (30,), generator=generator)
    ours = log_weights.clone().requires_grad_()
    loss = embedding_similarity_loss(ours.exp(), protein, partners)
    loss.backward()
    plain = log_weights.clone().requires_grad_()
    u = plain.exp()
    expected = (F.cosine_similarity(u, u[partners], dim=-1)
                - F.cosine_similarity(protein, protein[partners], dim=-1)).pow(2).mean()
    expected.backward()
    assert torch.allclose(loss, expected) and torch.allclose(ours.grad, plain.grad)


def test_micro_batches_hold_one_species_and_add_up_when_a_species_has_few_cells():
    from types import SimpleNamespace

    from stagekit.stages.cross_species.pretrain import SaturnTask

    data = two_species()
    model, protein = _model(data)
    model.macro_dropout.p = 0.0
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    species = [SimpleNamespace(name="a", counts=SimpleNamespace(n_vars=40)),
               SimpleNamespace(name="b", counts=SimpleNamespace(n_vars=40))]
    task = SaturnTask(model, species, [], 16, 0, {"lambda_l1": 0.01, "lambda_pe": 0.2})
    batch = {"xs": [data[0][0][:2], data[1][0][:10]], "partners": torch.randint(0, len(protein), (len(protein),))}

    def gradients(parts):
        model.zero_grad()
        total = 0.0
        for part in parts:
            loss = task.step(model, part, None)["loss"]
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    parts = task.micro_batches(batch, 3)
    # one species per part, none over 3 cells; the last (where DDP synchronises) holds every species
    assert [[len(x) for x in part["xs"]] for part in parts] == [[1, 0], [0, 3], [0, 3], [0, 3], [1, 1]]
    whole_loss, whole = gradients([batch])
    parts_loss, split = gradients(parts)
    assert abs(whole_loss - parts_loss) < 1e-4 * abs(whole_loss)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(whole, split, strict=True))


def test_metric_model_on_precomputed_gene_products_matches_counts():
    """align computes log1p(x) W_s once per cell while the macrogenes are frozen; the step must not change."""
    from stagekit.models.saturn import SaturnMetric

    data = two_species()
    metric = SaturnMetric(_model(data)[0]).eval()
    xs = [data[0][0][:7], data[1][0][:5]]
    products = [metric.gene_products(x, s) for s, x in enumerate(xs)]
    z, values = metric(xs)
    z_cached, values_cached = metric(products=products)
    assert torch.allclose(z, z_cached)
    assert all(torch.allclose(a, b) for a, b in zip(values, values_cached, strict=True))
    assert not torch.allclose(products[0], data[0][0][:7] @ metric.weights(0))  # the log1p is in the products
