"""The closing summary of `zsad evaluate` and `zsad demo`: what a user asks after the table."""

from __future__ import annotations


def format_summary(summary: dict, extra_stages: dict | None = None) -> str:
    """A block of lines: stage times, cached vs computed features, detector settings, outputs, W&B."""
    stages = {**(extra_stages or {}), **{k: v for k, v in summary["stages_s"].items() if k != "total"}}
    total = sum(stages.values())
    lines = ["── summary " + "─" * 60]
    lines.append("stages:    " + " · ".join(f"{name} {sec:.1f} s" for name, sec in stages.items()) + f"  (total {total:.1f} s)")
    e = summary["extractions"]
    derived = f", {e['derived']} derived from another scorer's features" if e.get("derived") else ""
    lines.append(f"features:  {e['computed']} extraction(s) computed ({e['computed_images']} images, {e.get('network_evaluations', 0):,} network "
                 f"evaluations), {e['cached']} read from cache ({e['cached_images']} images){derived}; cache {summary['cache_dir']}")
    lines.append("detectors:")
    lines += [f"  {name:<28} {how}" for name, how in summary["detectors"].items()]
    out = summary["outputs"]
    lines.append(f"outputs:   table {out['table']} (+ .csv, .json) · plots {out['plots']}/ · per-image scores {out['scores']}/ · detectors {out['detectors']}/")
    wandb = summary.get("wandb")
    if wandb and wandb.get("sync"):
        lines.append(f"W&B:       offline run in {wandb['folder']}; upload it with: {wandb['sync']}")
    elif wandb and wandb.get("url"):
        lines.append(f"W&B:       {wandb['url']}")
    elif wandb is None:
        lines.append("W&B:       off (logger.kind is not wandb)")
    return "\n".join(lines)
