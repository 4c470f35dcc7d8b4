"""The keys each (stage, model) accepts. A key missing here is an error, never silently ignored."""

from __future__ import annotations

from stagekit.config.schema import RUNTIME, TRAINING, Key, Schema

COUNT_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "batch_key": Key("str", "", "obs column of a batch covariate to condition on; empty for none"),
    "label_key": Key("str", "", "obs column of cell labels, kept for evaluation; empty for none"),
    "backed": Key("bool", False, "read cells from disk in contiguous blocks instead of loading X"),
}

VAE_MODEL = {
    "n_hidden": Key("list[int]", [128], "width of each hidden layer of encoder and decoder"),
    "n_latent": Key("int", 10, "size of the latent space", minimum=1),
    "dropout": Key("float", 0.1, "dropout rate in the encoder", minimum=0),
    "likelihood": Key("str", "nb", "nb/zinb on raw counts (scvi-tools), gaussian on standardised features",
                      choices=("nb", "zinb", "gaussian")),
    "variational": Key("bool", True, "false: a plain autoencoder (z is the encoder mean, no KL term)"),
    "beta": Key("float", 1.0, "weight of the KL term", minimum=0),
    "kl_warmup_epochs": Key("int", 0, "epochs over which the KL weight rises linearly from 0 to beta",
                            minimum=0),
}

SCHEMAS: dict[tuple[str, str], Schema] = {
    ("pretrain", "vae"): {"data": COUNT_DATA, "model": VAE_MODEL, "training": TRAINING, "runtime": RUNTIME},
}
