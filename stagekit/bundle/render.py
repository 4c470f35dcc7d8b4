"""`stagekit info`: a summary of a bundle (rich or JSON). Imports neither torch nor anndata."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from stagekit.bundle.format import Bundle
from stagekit.bundle.records import format_group_table, format_load_report, frozen_check

_SPARK = "▁▂▃▄▅▆▇█"
# per-epoch values worth a curve: losses, the monitored validation metrics, and what collapse guards watch
CURVES = ("train_loss", "val_loss", "val_f1", "val_auroc", "pred_positive_fraction", "watched_mean_probability",
          "mean_probability_drift", "largest_class_share", "largest_cluster")


def sparkline(values: list[float], width: int = 48) -> str:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return ""
    if len(values) > width:  # keep the shape, drop detail
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width)]
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(_SPARK[int((v - lo) / span * (len(_SPARK) - 1))] if v in finite else " " for v in values)


def summary(bundle: Bundle) -> dict[str, Any]:
    config = bundle.config()
    return {"path": bundle.path, "stage": bundle.stage, "model": bundle.model, "status": bundle.status,
            "epochs_done": bundle.epochs_done, "seed": bundle.seed, "created": bundle.created,
            "wall_time_s": bundle.wall_time_s, "device": bundle.device, "argv": bundle.argv,
            "lineage": bundle.lineage, "data": bundle.data, "n_genes": len(bundle.var_names),
            "categories": {k: v for k, v in bundle.categories.items()}, "config": config,
            "final_metrics": bundle.final_metrics, "history": bundle.history, "versions": bundle.versions,
            "top_k": [{k: v for k, v in s.items() if k != "weights"} for s in bundle.top_k],
            "records": bundle.records, "sizes": bundle.sizes}


def render(bundle: Bundle, console: Console) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_row("stage", f"[bold]{bundle.stage}[/] ({bundle.model})", "status", bundle.status)
    head.add_row("epochs", str(bundle.epochs_done), "seed", str(bundle.seed))
    head.add_row("created", bundle.created, "wall time", f"{bundle.wall_time_s:.1f} s")
    head.add_row("device", bundle.device, "versions",
                 ", ".join(f"{k} {v}" for k, v in bundle.versions.items() if k in ("stagekit", "torch")))
    if bundle.sizes:
        largest = sorted(bundle.sizes.items(), key=lambda kv: -kv[1])
        head.add_row("size", f"{sum(bundle.sizes.values()) / 1e6:.1f} MB", "parts",
                     ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in largest if v >= 1e5) or "all under 0.1 MB")
    parts: list[Any] = [head]

    chain = [f"{bundle.stage} ({bundle.model})  {bundle.path}"]
    chain += [f"{e['stage']} ({e.get('model', '?')})  {e['path']}  sha256 {e['sha256'][:12]}" for e in bundle.lineage]
    parts.append(Panel("\n".join(f"{'  ' * i}{'└ ' if i else ''}{line}" for i, line in enumerate(chain)),
                       title="lineage", expand=False))

    if bundle.data:
        d = bundle.data
        cats = "; ".join(f"{k}: {len(v)} ({', '.join(v[:4])}{', …' if len(v) > 4 else ''})"
                         for k, v in bundle.categories.items())
        described = "".join(f"\n{d[k]}" for k in ("design", "split") if k in d)  # what a phase says of its data
        files = d["files"].replace("\n", " + ") if "files" in d else d.get("path")
        matrix = f" ({d['matrix']})" if "matrix" in d else ""
        parts.append(Panel(f"{files}\n{d.get('n_obs')} {d.get('units', 'cells')} x {d.get('n_vars')} genes{matrix},"
                           f" sha256 {str(d.get('sha256'))[:12]}{escape(described)}\n{cats}", title="data",
                           expand=False))

    config = bundle.config()
    key_config = Table.grid(padding=(0, 2))
    for section, values in config.items():
        if section not in ("preset", "runtime", "data"):
            key_config.add_row(escape(f"[{section}]"), escape("  ".join(f"{k}={v}" for k, v in values.items())))
    parts.append(Panel(key_config, title="config", expand=False))

    if bundle.final_metrics:
        metrics = Table(title="metrics of the saved weights", show_header=True)
        metrics.add_column("metric")
        metrics.add_column("value", justify="right")
        for k, v in bundle.final_metrics.items():
            metrics.add_row(k, f"{v:.5g}")
        parts.append(metrics)

    if bundle.top_k:
        kept = Table(title=f"best states by {bundle.top_k[0]['metric']}")
        for column in ("name", "epoch", "value"):
            kept.add_column(column, justify="left" if column == "name" else "right")
        for state in bundle.top_k:
            kept.add_row(state["name"], str(state["epoch"]), f"{state['value']:.5g}")
        parts.append(kept)

    records = bundle.records.get("phases", [])
    if "load_report" in bundle.records:
        parts.append(Panel(escape(format_load_report(bundle.records["load_report"])),
                           title="weights from the parent", expand=False))
    if any(r.get("frozen_before") for r in records) or len(records) > 1:  # more than one plain phase
        text = []
        for r in records:
            text += [f"phase {r['index'] + 1} '{r['name']}': {r['epochs']} epochs; {frozen_check(r)}",
                     *(f"  {line}" for line in format_group_table(r["groups"]))]
        parts.append(Panel(escape("\n".join(text)), title="phases", expand=False))
    else:
        phases = bundle.history.get("phase", [])
        if phases and max(phases) > 0:
            spans = [(int(p), sum(1 for q in phases if q == p)) for p in sorted(set(phases))]
            parts.append(Panel("  ".join(f"phase {p + 1}: {n} epochs" for p, n in spans), title="phases",
                               expand=False))

    curves = [k for k in CURVES if bundle.history.get(k)]
    if curves:
        width = max(len(k) for k in curves) + 2
        parts.append(Panel("\n".join(f"{k:<{width}}{sparkline(bundle.history[k])}  "
                                     f"{bundle.history[k][0]:.4g} → {bundle.history[k][-1]:.4g}"
                                     for k in curves), title="curves", expand=False))
    console.print(Group(*parts))
