import numpy as np
import pytest

from stagekit.metrics.integration import cross_species_knn_agreement, label_transfer, species_mixing


def _data(aligned: bool):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), 40)
    species = np.tile(np.array(["human", "mouse"]), 60)
    centres = rng.normal(size=(3, 8)) * 3
    shift = 0.0 if aligned else 6.0
    z = centres[np.searchsorted(["a", "b", "c"], labels)] + rng.normal(size=(120, 8))
    z[species == "mouse"] += shift
    return z, species, labels


def test_aligned_species_transfer_and_mix():
    z, species, labels = _data(aligned=True)
    transfer = label_transfer(z, species, labels, seeds=3)
    assert set(transfer) == {"human->mouse", "mouse->human"}
    assert transfer["human->mouse"]["balanced_accuracy"] > 0.9
    assert cross_species_knn_agreement(z, species, labels, 1) > 0.9
    assert species_mixing(z, species) == pytest.approx(1.0, abs=0.25)


def test_separated_species_score_low_mixing():
    z, species, labels = _data(aligned=False)
    assert species_mixing(z, species) < 0.2


def test_partly_shared_labels_report_the_ceiling_and_the_shared_cells(recwarn):
    """Mouse has a type human lacks: accuracy on all mouse cells is capped by the share of shared labels; the
    scores on the shared labels' cells and the unmatched label are reported, with no warning per seed."""
    z, species, labels = _data(aligned=True)
    labels = labels.copy()
    labels[(species == "mouse") & (labels == "c")] = "d"  # mouse's third type has no human counterpart
    transfer = label_transfer(z, species, labels, seeds=3)["human->mouse"]
    assert transfer["max_accuracy"] == pytest.approx(2 / 3) and transfer["unmatched_labels"] == ["d"]
    assert transfer["accuracy"] <= transfer["max_accuracy"] + 1e-9
    assert transfer["shared_accuracy"] > 0.9 and transfer["shared_balanced_accuracy"] > 0.9
    assert not [w for w in recwarn if "y_pred contains classes not in y_true" in str(w.message)]
