"""A trained transition bundle read back: the model, its expression space, the screen's codes and split, and the
perturbation inputs (what extract and evaluate need)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagekit.bundle import Bundle
from stagekit.models.transition import TransitionModel
from stagekit.stages.perturbation.model_config import TransitionConfig, TransitionData
from stagekit.stages.perturbation.screen import Screen
from stagekit.stages.perturbation.space import ExpressionSpace
from stagekit.train.state import load_weights


@dataclass
class TransitionBundle:
    """What extract and evaluate need of a transition bundle."""

    model: TransitionModel
    space: ExpressionSpace
    screen: Screen
    pert_inputs: np.ndarray
    data: TransitionData
    set_len: int
    var_names: list[str]  # the training file's genes (library sizes were summed over them)
    features: dict  # path and sha256 of --pert-features; empty for one-hot perturbations

    @property
    def keys(self) -> dict[str, str]:
        """obs columns of the perturbation and the context in written files."""
        return {"pert": self.data.pert_key, "context": self.data.context_key or "context"}


def stored_screen(bundle: Bundle) -> Screen:
    """The screen's codes and split as the bundle stored them."""
    r, c = bundle.results, bundle.categories
    return Screen(np.asarray(r["pert"]), c["perts"], int(r["control"]), np.asarray(r["context"]), c["contexts"],
                  np.asarray(r["batch"]) if "batch" in r else None, c.get("batches", []), np.asarray(r["split"]))


def stored_space(bundle: Bundle) -> ExpressionSpace:
    """The expression space a transition bundle was trained in."""
    described = TransitionConfig.of(bundle)
    return ExpressionSpace.from_arrays(bundle.categories["space_genes"], bundle.results, described.data.embed_key,
                                       described.model.n_embedding)


def load_transition(bundle: Bundle) -> TransitionBundle:
    """The model (in eval mode) and everything it was trained with, from a bundle read with its results."""
    described = TransitionConfig.of(bundle)
    model = described.build()
    load_weights(model, bundle.weights, bundle.path)
    r = bundle.results
    features = {k.removeprefix("features_"): v for k, v in bundle.data.items() if k.startswith("features_")}
    return TransitionBundle(model.eval(), stored_space(bundle), stored_screen(bundle),
                            np.asarray(r["pert_inputs"]), described.data, bundle.config()["sets"]["cell_set_len"],
                            bundle.var_names, features)


def vocabulary_of(bundle: Bundle) -> tuple[list[str], int]:
    """A one-hot model's perturbation-encoder inputs by name, and the control's among them: a fine-tuned model
    appends new perturbations to its pretrained ones."""
    if "pert_vocabulary" in bundle.categories:
        return bundle.categories["pert_vocabulary"], int(bundle.results["vocabulary_control"])
    return bundle.categories["perts"], int(bundle.results["control"])
