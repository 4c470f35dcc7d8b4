"""What a run reports of itself in a bundle's `records` (torch-free: `info` shows them): per-phase
parameter-group tables, checksums of frozen tensors, and the load report of weights carried over."""

from __future__ import annotations


def format_group_table(rows: list[dict]) -> list[str]:
    """A parameter-group table (see `train.optim.group_table`) as aligned text lines."""
    lines = [f"{'group':<16} {'lr':>9} {'decay':>7} {'trainable':>10} {'total':>10}  modules"]
    for r in rows:
        lines.append(f"{r['group']:<16} {r['lr']:>9.2e} {r['weight_decay']:>7.0e} {r['trainable']:>10,} "
                     f"{r['total']:>10,}  {r['modules']}")
    return lines


def frozen_check(record: dict) -> str:
    """Whether a phase's frozen tensors ended as they started, in one line."""
    before, after = record.get("frozen_before", {}), record.get("frozen_after", {})
    if not before:
        return "no frozen tensors"
    if not after:
        return f"{len(before)} frozen tensors; the phase did not finish (no end checksums)"
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    if changed:
        return f"{len(changed)} of {len(before)} frozen tensors CHANGED: {', '.join(changed[:4])}"
    return f"{len(before)} frozen tensors bit-identical at start and end (sha256)"


def format_load_report(report: dict) -> str:
    """Counts and first names per kind: loaded / new / mismatched / missing / unexpected."""
    parts = []
    for kind in ("loaded", "new", "mismatched", "missing", "unexpected"):
        names = report.get(kind, [])
        if names:
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            parts.append(f"{len(names)} {kind} ({shown})")
    return "; ".join(parts) or "nothing to load"
