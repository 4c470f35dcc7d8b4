"""What a key may hold. Schemas are plain dicts: section -> key -> Key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
              "list[int]": "a list of integers", "list[float]": "a list of numbers", "list[str]": "a list of strings"}


@dataclass(frozen=True)
class Key:
    type: str
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


Schema = dict[str, dict[str, Key]]


def _is_type(value: Any, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "str":
        return isinstance(value, str)
    if type_name.startswith("list["):
        inner = type_name[5:-1]
        return isinstance(value, list) and all(_is_type(v, inner) for v in value)
    raise ValueError(f"unknown schema type {type_name}")


def check_value(dotted: str, key: Key, value: Any, source: str) -> Any:
    """Return the value (ints widened to float where a float is expected) or raise ValueError."""
    if not _is_type(value, key.type):
        raise ValueError(f"{source}: key '{dotted}' must be {TYPE_NAMES[key.type]}, got {value!r}")
    if key.type == "float":
        value = float(value)
    if key.type == "list[float]":
        value = [float(v) for v in value]
    if key.choices is not None and value not in key.choices:
        options = ", ".join(repr(c) for c in key.choices)
        raise ValueError(f"{source}: key '{dotted}' must be one of {options}, got {value!r}")
    if key.minimum is not None and isinstance(value, int | float) and value < key.minimum:
        raise ValueError(f"{source}: key '{dotted}' must be >= {key.minimum}, got {value!r}")
    if key.maximum is not None and isinstance(value, int | float) and value > key.maximum:
        raise ValueError(f"{source}: key '{dotted}' must be <= {key.maximum}, got {value!r}")
    return value


TRAINING = {
    "epochs": Key("int", 100, "number of passes over the training cells", minimum=1),
    "max_steps": Key("int", 0, "stop after this many optimizer steps in all (the epoch they end in is validated "
                     "and recorded; the learning-rate schedule still spans training.epochs); 0: no limit",
                     minimum=0),
    "batch_size": Key("int", 256, "cells per optimizer step (summed over all processes)", minimum=1),
    "lr": Key("float", 1e-3, "peak learning rate (of the optimizer chosen by `optimizer`)", minimum=0),
    "weight_decay": Key("float", 1e-6, "weight decay (never on biases, norm layers or embeddings)",
                        minimum=0),
    "optimizer": Key("str", "adamw", "adamw (decoupled weight decay), adam (weight decay as L2) or sgd (Nesterov "
                     "momentum 0.9)", choices=("adamw", "adam", "sgd")),
    "grad_clip": Key("float", 0.0, "clip the gradient norm to this value; 0 disables", minimum=0),
    "scheduler": Key("str", "constant", "learning-rate schedule", choices=("constant", "cosine")),
    "warmup_ratio": Key("float", 0.0, "fraction of steps of linear warm-up to lr (constant and cosine schedules)",
                        minimum=0),
    "min_lr_ratio": Key("float", 0.0, "final lr as a fraction of lr (cosine schedule)", minimum=0),
    "val_fraction": Key("float", 0.1, "fraction of cells held out for validation; 0 disables", minimum=0),
    "early_stopping_patience": Key("int", 0, "epochs without validation improvement before stopping; 0 off",
                                   minimum=0),
    "min_epochs": Key("int", 0, "epochs before early stopping may stop the run", minimum=0),
    "save_top_k": Key("int", 0, "keep the k best states by the monitored validation metric in the bundle (the "
                      "final weights are the best one); 0 keeps only the final state unless early stopping is on",
                      minimum=0),
    "checkpoint_every": Key("int", 0, "write a resumable bundle every N epochs; 0 only at the end",
                            minimum=0),
    "keep_resume": Key("bool", False, "keep the optimizer, scheduler, RNG and loop state in the final bundle, so "
                       "`--resume` can train it further (interrupted and checkpoint bundles always keep it); off, "
                       "the final bundle holds the weights and metadata only"),
    "seed": Key("int", 0, "seed for initialisation, splits, shuffling and sampling", minimum=0),
}

RUNTIME = {
    "accelerator": Key("str", "cpu", "device type: cpu, cuda (or gpu), mps, or auto to take what is there",
                       choices=("cpu", "cuda", "gpu", "mps", "auto")),
    "devices": Key("int", 1, "number of devices (processes) to train on", minimum=1),
    "num_nodes": Key("int", 1, "number of machines for multi-node DDP", minimum=1),
    "strategy": Key("str", "auto", "how several devices share the work: auto, ddp, ddp_spawn or fsdp",
                    choices=("auto", "ddp", "ddp_spawn", "fsdp")),
    "precision": Key("str", "32-true", "numeric precision",
                     choices=("32-true", "16-mixed", "bf16-mixed", "64-true")),
    "threads": Key("int", 0, "torch CPU threads per process; 0 keeps torch's default", minimum=0),
    "num_workers": Key("int", 0, "DataLoader worker processes that load batches ahead of the training step; 0 loads "
                       "in the training process", minimum=0),
    "logger": Key("str", "", "write every step's and epoch's scalars while training: csv, tensorboard, or both "
                  "(\"csv,tensorboard\"); empty for none",
                  choices=("", "csv", "tensorboard", "csv,tensorboard", "tensorboard,csv")),
    "log_dir": Key("str", "", "folder of the live logs (each run adds version_N); empty: beside the output, "
                   "OUTPUT_NAME.logs"),
}
