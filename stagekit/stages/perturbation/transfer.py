"""A pretrained transition model moved to a target screen, one command per phase: `finetune --preset
frozen-backbone` (A) and `frozen-backbone-polish` (B) train the encoders and the gene decoder around a frozen
backbone; `unfreeze --preset progressive` (C -> D -> E) unfreezes the blocks from the top with layer-wise lr
decay; `unfreeze --preset full-unfreeze` is the naive comparison.

A phase whose parent is a pretrain bundle starts a target task: the target file(s) projected with the pretrain
bundle's own space (genes matched by name), split anew, and perturbations the model never saw appended to its
one-hot vocabulary (new perturbation-encoder inputs; a features model reads their features). A phase whose parent
is a fine-tuning bundle continues that task: the same files, split and vocabulary. Weights carry over by name,
with a load report; anything neither loaded nor declared new stops the phase unless `--allow-partial`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stagekit.bundle import Bundle, file_sha256, read_bundle
from stagekit.bundle.records import format_group_table
from stagekit.config import Config
from stagekit.data.anndata_io import CountMatrix
from stagekit.errors import UserError
from stagekit.models.transition import TransitionModel
from stagekit.stages.perturbation.cells import trained_files
from stagekit.stages.perturbation.model_config import TransitionArchitecture, TransitionConfig, TransitionData
from stagekit.stages.perturbation.pretrain import (
    DESIGN,
    design_line,
    file_of_cell,
    pert_inputs,
    screen_arrays,
    screen_counts,
    space_line,
    training_sets,
)
from stagekit.stages.perturbation.screen import TEST, Screen, SplitRequest, assign_split, read_screen
from stagekit.stages.perturbation.space import ExpressionSpace, screen_in_space
from stagekit.stages.perturbation.task import TransitionTask
from stagekit.stages.perturbation.trained import stored_screen, stored_space, vocabulary_of
from stagekit.stages.phase import PhaseRun, kept_metrics, lineage_of
from stagekit.stages.spec import PhaseRequest
from stagekit.train import FitResult
from stagekit.train.optim import FreezePlan, group_table, layer_decay_scales, matches_prefix, param_groups
from stagekit.train.phases import Phase
from stagekit.train.state import weights_to_numpy
from stagekit.train.transfer import LoadReport, Regrow, load_by_name

PARENT_STAGES = ("pretrain", "finetune", "unfreeze")
HEAD = ("basal_encoder", "pert_encoder", "gene_decoder")  # the encoders and the decoder: never frozen here
TOP = ("norm", "project_out")  # the backbone's output layers, unfrozen with the top blocks


@dataclass
class Target:
    """The screen a phase trains on."""

    counts: CountMatrix
    screen: Screen
    inputs: np.ndarray  # the perturbation encoder's input per perturbation code of the screen
    vocabulary: list[str] | None  # one-hot models: the encoder's inputs by name (the pretrained ones first)
    vocabulary_control: int  # the control's input among them
    design: dict  # layer, pert_key, control, context_key, batch_key
    provenance: dict  # the features file of a features model


def read_parent(request: PhaseRequest) -> Bundle:
    command = f"{request.config.stage} --preset {request.config.preset}"
    parent = read_bundle(request.parent, PARENT_STAGES, command=command)
    if parent.model != "transition":
        raise UserError(f"{request.parent} holds a '{parent.model}' model ({parent.stage}); `stagekit {command}` "
                        "fine-tunes a transition model: give a `pretrain --preset transition` bundle or one of its "
                        "fine-tuned descendants")
    if parent.status != "complete":
        raise UserError(f"{request.parent} is a '{parent.status}' bundle; finish it with --resume first")
    return parent


def _extended_vocabulary(parent: Bundle, screen: Screen) -> tuple[list[str], int, np.ndarray]:
    """The parent's vocabulary with the screen's new perturbations appended (the screen's control is the
    parent's control, whatever its label), and the screen's one-hot inputs over it."""
    vocabulary, control = vocabulary_of(parent)
    vocabulary = list(vocabulary)
    index = {name: i for i, name in enumerate(vocabulary)}
    rows = []
    for code, name in enumerate(screen.perts):
        if code == screen.control:
            rows.append(control)
            continue
        if name not in index:
            index[name] = len(vocabulary)
            vocabulary.append(name)
        rows.append(index[name])
    return vocabulary, control, np.eye(len(vocabulary), dtype=np.float32)[rows]


def _design(config: Config, parent: Bundle, continuing: bool) -> dict:
    """The target's design: the command's keys over the parent's (empty keys take the parent's); a phase that
    continues a fine-tuned bundle keeps its design and split, and refuses keys that would change them."""
    data_cfg = config["data"]
    design = dataclasses.asdict(TransitionConfig.of(parent).data)
    if continuing:
        stored = parent.config()
        # exclude and test_fraction of the target task, from its config where the model description lacks them
        design |= {k: stored["data"][k] for k in ("exclude", "test_fraction") if design[k] is None}
        kept = {f"data.{k}": design[k] for k in (*DESIGN, "exclude", "test_fraction")}
        kept["training.val_fraction"] = stored["training"]["val_fraction"]
        for dotted, value in kept.items():
            section, key = dotted.split(".")
            source = config.sources.get(dotted, "default")  # a resumed run's own config was checked when it began
            if source != "default" and not source.startswith("resume ") and config[section][key] != value:
                raise UserError(f"{parent.path} is a fine-tuned bundle: this phase continues its target screen "
                                f"and split ({dotted} = {value!r}); drop {dotted}")
        config["training"]["val_fraction"]  # noqa: B018 - read: the stored split holds the validation cells
        return design
    design |= {key: data_cfg[key] for key in DESIGN if data_cfg[key]}
    return design | {"exclude": data_cfg["exclude"], "test_fraction": data_cfg["test_fraction"]}


def _target_space(parent: Bundle, design: dict) -> ExpressionSpace:
    """The parent's space, read from the target's obsm key where the model works in an obsm embedding."""
    space = stored_space(parent)
    if design["embed_key"] and not space.embed_key:
        raise UserError(f"{parent.path} works in the principal components of its genes; --embed-key needs a model "
                        "pretrained in an obsm embedding (pretrain --embed-key)")
    return dataclasses.replace(space, embed_key=design["embed_key"] or space.embed_key)


def _features(parent: Bundle) -> Path | None:
    """A features model's file (unchanged since the pretrain, checked by sha256); None for one-hot."""
    if "features_path" not in parent.data:
        return None
    path = Path(parent.data["features_path"])
    if not path.is_file() or file_sha256(path) != parent.data["features_sha256"]:
        raise UserError(f"{parent.path} reads perturbations through the features file {path}, which is gone or "
                        "changed; restore it to fine-tune on new perturbations")
    return path


def _new_target(request: PhaseRequest, parent: Bundle, design: dict) -> Target:
    if not request.data:
        raise UserError(f"give the target screen's .h5ad file(s) after {request.parent}")
    counts = screen_counts(request.data, design, request.config["data"]["backed"])
    screen = read_screen(counts.obs, counts.where, design["pert_key"], design["control"], design["context_key"],
                         design["batch_key"], design["exclude"])
    features = _features(parent)
    if counts.fingerprint()["sha256"] == parent.data.get("sha256"):
        # the pretraining data: the cells it held out stay out (they measure forgetting, `--held-out-of`)
        held = np.asarray(parent.results["split"]) == TEST
        screen.pert[held] = -1
        request.log(f"note: {int(held.sum())} cells held out by {parent.path} stay out of the target task")
    screen.split = assign_split(screen, SplitRequest(
        design["test_fraction"], request.config["training"]["val_fraction"], [], [], features is not None, None,
        request.config["training"]["seed"], [Path(p) for p, _, _ in counts.sources], file_of_cell(counts)),
        counts.where)
    if features is not None:
        provenance = {k: v for k, v in parent.data.items() if k.startswith("features_")}
        return Target(counts, screen, pert_inputs(screen, features), None, -1, design, provenance)
    vocabulary, control, inputs = _extended_vocabulary(parent, screen)
    return Target(counts, screen, inputs, vocabulary, control, design, {})


def _stored_target(request: PhaseRequest, holder: Bundle, design: dict) -> Target:
    """The target task `holder` stored: a fine-tuned parent's (the phase continues it) or, on --resume, the
    interrupted run's own (recomputed, the split could differ from the one the weights were trained with)."""
    counts = screen_counts(trained_files(holder, request.data), design, request.config["data"]["backed"])
    if counts.fingerprint()["sha256"] != holder.data.get("sha256"):
        raise UserError(f"{counts.where} is not the target data {holder.path} was trained on; this phase continues "
                        "its split (stored by cell position): give the same file(s) in the same order")
    vocabulary, control = (vocabulary_of(holder) if "pert_vocabulary" in holder.categories else (None, -1))
    provenance = {k: v for k, v in holder.data.items() if k.startswith("features_")}
    return Target(counts, stored_screen(holder), np.asarray(holder.results["pert_inputs"]), vocabulary, control,
                  design, provenance)


def _carried_model(parent: Bundle, target: Target, n_genes: int, allow_partial: bool, log) -> tuple[
        TransitionModel, TransitionArchitecture, LoadReport]:
    """The model of the target's shape with the parent's weights loaded by name (new perturbation inputs and a
    decoder the parent lacked are declared new)."""
    described = TransitionConfig.of(parent)
    stored = described.model
    architecture = dataclasses.replace(stored, n_pert_inputs=target.inputs.shape[1], n_genes=n_genes)
    model = dataclasses.replace(described, model=architecture).build()
    regrow = {}
    if target.vocabulary is not None:
        known = len(vocabulary_of(parent)[0])
        source = np.array([i if i < known else -1 for i in range(len(target.vocabulary))])
        regrow["pert_encoder.0.weight"] = Regrow(1, source, target.vocabulary)
    new = ("gene_decoder",) if n_genes and not stored.n_genes else ()
    report = load_by_name(model, parent.weights, new, regrow)
    log(f"weights from {parent.path}: {report.summary()}")
    if report.partial and not allow_partial:
        raise UserError(f"{parent.path}: not every weight carries over ({len(report.mismatched)} mismatched, "
                        f"{len(report.missing)} missing, {len(report.unexpected)} unexpected: "
                        f"{', '.join(report.partial[:3])}); pass --allow-partial to train anyway")
    return model, architecture, report


def _frozen_phase(config: Config, model: TransitionModel) -> list[Phase]:
    frozen = tuple(config["freeze"]["frozen"])
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in frozen if not any(matches_prefix(n, p) for n in names)]
    if unknown:
        raise UserError(f"freeze.frozen '{unknown[0]}' names no module of the model (modules: "
                        f"{', '.join(dict.fromkeys(n.split('.')[0] for n in names))})")
    if all(any(matches_prefix(n, p) for p in frozen) for n in names):
        raise UserError(f"freeze.frozen {list(frozen)} freezes every parameter; leave something to train")
    return [Phase(name=Path(config.preset).stem, freeze=FreezePlan(frozen=frozen))]


def _unused_sections(config: Config, keys: list[str], why: str) -> None:
    """Keys of phases that do not run. A preset may set them for phases a later layer (--phase, --set) leaves
    out; set on the command line, or by the same file that chose the phases, they would be accepted and ignored."""
    chooser = config.sources.get("unfreeze.phases", "default")
    for dotted in keys:
        section, key = dotted.split(".")
        config[section][key]  # noqa: B018 - read: see above
        source = config.sources.get(dotted, "default")
        if source.startswith("--") or (source == chooser and source != "default" and not source.startswith("resume ")):
            raise UserError(f"{dotted} is set ({source}) but {why}")


def unfreeze_phases(config: Config, n_blocks: int) -> list[Phase]:
    """Phases C (top k_top blocks), D (k_middle more), E (every block), each with the blocks' lr decayed from
    the head's by layer_decay per block from the top (timm/BEiT: head x1, top block x decay, ...)."""
    u = config["unfreeze"]
    names = list(u["phases"])
    if not names or any(n not in ("C", "D", "E") for n in names) or names != sorted(set(names)):
        raise UserError(f"unfreeze.phases {names}: phases C, D, E in order (each at most once)")
    uses_top, uses_middle = bool({"C", "D"} & set(names)), "D" in names
    k_top = u["k_top"] if uses_top else 0
    k_middle = u["k_middle"] if uses_middle else 0
    _unused_sections(config, [k for k, used in (("unfreeze.k_top", uses_top), ("unfreeze.k_middle", uses_middle))
                              if not used], "no phase that runs reads it")
    if uses_top and k_top > n_blocks:
        raise UserError(f"unfreeze.k_top = {k_top} is larger than the model's {n_blocks} transformer blocks")
    unfrozen = {"C": k_top, "D": min(n_blocks, k_top + k_middle), "E": n_blocks}
    for before, after in zip(names, names[1:], strict=False):
        if unfrozen[after] <= unfrozen[before]:
            raise UserError(f"phase {after} unfreezes nothing phase {before} has not (unfreeze.k_top = {k_top}, "
                            f"k_middle = {k_middle}, {n_blocks} blocks); change them or drop phase {after}")
    blocks = [f"blocks.{i}" for i in range(n_blocks)]
    scales = layer_decay_scales([*blocks, "head"], u["layer_decay"])
    lr_scales = {p: 1.0 for p in HEAD} | {p: scales[blocks[-1]] for p in TOP} | {b: scales[b] for b in blocks}
    phases = []
    for name in ("C", "D", "E"):
        section = f"phase_{name.lower()}"
        if name not in names:
            _unused_sections(config, [f"{section}.{k}" for k in ("epochs", "lr", "warmup_ratio", "min_lr_ratio")],
                             f"phase {name} does not run (unfreeze.phases, --phase)")
            continue
        s = config[section]
        plan = FreezePlan(frozen=("blocks",), trainable=(*HEAD, *TOP, *blocks[n_blocks - unfrozen[name]:]),
                          lr_scales=lr_scales)
        phases.append(Phase(name=name, epochs=s["epochs"], freeze=plan, lr=s["lr"], scheduler="cosine",
                            warmup_ratio=s["warmup_ratio"], min_lr_ratio=s["min_lr_ratio"]))
    return phases


def run(request: PhaseRequest) -> Path | None:
    """`finetune` or `unfreeze` of a transition model on a target screen; returns the bundle."""
    config = request.config
    parent = read_parent(request)
    continuing = parent.stage != "pretrain"
    if config.stage == "unfreeze" and config.sources.get("unfreeze.phases") == "--phase" and not (
            continuing or any(e["stage"] == "finetune" for e in parent.lineage)):
        only = config["unfreeze"]["phases"][0]
        raise UserError(f"--phase {only} continues a model fine-tuned with a frozen backbone first; "
                        f"{request.parent} is a pretrain bundle: run `stagekit finetune --preset frozen-backbone` "
                        "on it (phase A), or `unfreeze` without --phase")
    design = _design(config, parent, continuing)
    space = _target_space(parent, design)
    phase = PhaseRun(config, request.output, request.resume, request.quiet)
    resumed, lineage = phase.resume_bundle, lineage_of(parent)  # the parent hashed once, not per checkpoint
    if resumed is not None and (not resumed.lineage or resumed.lineage[0]["sha256"] != lineage[0]["sha256"]):
        raise UserError(f"{request.resume} was fine-tuned from another parent than {request.parent}; resume with "
                        "the parent it was started from")
    holder = resumed or (parent if continuing else None)
    target = _stored_target(request, holder, design) if holder else _new_target(request, parent, design)
    phase.check_resume_data(target.counts.fingerprint())
    counts, screen, loss_cfg = target.counts, target.screen, config["loss"]
    if not space.embed_key and not space.has_pca and loss_cfg["decoder_weight"] > 0:
        raise UserError(f"{parent.path} works on the genes themselves (data.n_components = 0): there is no "
                        "embedding to decode from; set loss.decoder_weight = 0")
    if counts.var_names != parent.var_names:
        request.log(f"note: {counts.where} holds {counts.n_vars} genes ({len(parent.var_names)} in the pretrain "
                    "data); cells are normalised by their totals over these genes")
    genes, embedding = screen_in_space(space, counts)
    decoder = space.decodable and loss_cfg["decoder_weight"] > 0
    set_len = config["sets"]["cell_set_len"]
    sets = training_sets(screen, set_len, request.log)
    request.log(f"target {sets.line}" + (f"; {space_line(space, counts)}" if space.embed_key else ""))
    phase.engine.launch()
    seed = config["training"]["seed"]
    torch.manual_seed(seed)  # the new perturbation inputs' initial weights
    n_genes = TransitionConfig.of(parent).model.n_genes or (len(space.genes) if decoder else 0)
    model, architecture, report = _carried_model(parent, target, n_genes, bool(request.options.get("allow_partial")),
                                                 request.log)
    phases = (_frozen_phase(config, model) if config.stage == "finetune"
              else unfreeze_phases(config, len(model.blocks)))
    task = TransitionTask(model, embedding, genes if decoder else None, target.inputs, sets.groups,
                          sets.val_groups, set_len, config["training"]["batch_size"], loss_cfg, seed, phases)
    model_config = TransitionConfig(architecture, TransitionData(**design)).to_toml()
    results, categories = screen_arrays(screen, target.inputs, space)
    if target.vocabulary is not None:
        categories["pert_vocabulary"] = target.vocabulary
        results["vocabulary_control"] = np.array(target.vocabulary_control)
    data = counts.fingerprint() | target.provenance | {"design": design_line(design), "split": sets.line}

    def bundle_for(result: FitResult) -> Bundle:
        return Bundle(weights=weights_to_numpy(model), model_config=model_config, lineage=lineage,
                      data=data, var_names=counts.var_names, categories=categories,
                      final_metrics=kept_metrics(result, ("train_", "val_")), results=results,
                      records={"load_report": report.as_dict()})

    return phase.fit(task, bundle_for)


def print_plan(request: PhaseRequest) -> None:
    """--print-config: each phase's parameter-group table on the parent's model, without data or training (new
    perturbations of the target data would add encoder inputs to the `base`/`pert_encoder` group)."""
    config = request.config
    parent = read_parent(request)
    model = TransitionConfig.of(parent).build()
    phases = (_frozen_phase(config, model) if config.stage == "finetune"
              else unfreeze_phases(config, len(model.blocks)))
    training = config["training"]
    for phase in phases:
        phase.freeze.apply(model)
        groups = param_groups(model, phase.lr or training["lr"], training["weight_decay"], phase.freeze)
        print(f"# phase '{phase.name}': {phase.epochs or training['epochs']} epochs")
        print("\n".join(f"#   {line}" for line in format_group_table(group_table(model, groups))))
