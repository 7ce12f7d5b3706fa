"""Results table (CSV, Markdown, JSON) and plots (ROC curves, score histograms)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from zsad.utils.files import disk_full_guard

COLUMNS = ["scorer", "id", "ood", "shift", "auroc", "auroc_ci_low", "auroc_ci_high", "fpr95", "aupr_in", "aupr_out", "n_id", "n_ood",
           "published_auroc", "delta_auroc"]


def mean_rows(rows: list[dict]) -> list[dict]:
    """One mean row per scorer (over all its pairs), and per scorer and shift group when marked."""
    out = []
    for scorer in dict.fromkeys(r["scorer"] for r in rows):
        mine = [r for r in rows if r["scorer"] == scorer]
        groups = [("all", mine)] + [(g, [r for r in mine if r["shift"] == g]) for g in ("far", "near") if any(r["shift"] == g for r in mine)]
        for label, group in groups:
            row = {"scorer": scorer, "id": "mean", "ood": label, "shift": label}
            for key in ("auroc", "fpr95", "aupr_in", "aupr_out"):
                row[key] = float(np.mean([r[key] for r in group]))
            # Like with like: the published mean and ours over exactly the pairs that have both numbers.
            both = [r for r in group if r.get("published_auroc") is not None]
            row["published_auroc"] = float(np.mean([r["published_auroc"] for r in both])) if both else None
            row["delta_auroc"] = float(np.mean([r["auroc"] - r["published_auroc"] for r in both])) if both else None
            row["n_published_pairs"] = len(both)
            row["n_pairs"] = len(group)
            out.append(row)
    return out


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _fmt_delta(value) -> str:
    return "" if value is None else f"{value:+.3f}"


def to_markdown(rows: list[dict], means: list[dict], title: str = "", published_sources: dict[str, str] | None = None) -> str:
    has_published = any(r.get("published_auroc") is not None for r in rows)
    head = ["scorer", "ID", "OOD", "shift", "AUROC [95% CI]", "FPR@95 ↓", "AUPR-In", "AUPR-Out"] + (["published AUROC",
                                                                                                     "Δ (ours − published)"] if has_published else [])
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = f" [{_fmt(r['auroc_ci_low'])}, {_fmt(r['auroc_ci_high'])}]" if r.get("auroc_ci_low") is not None else ""
        cells = [r["scorer"], r["id"], r["ood"], r.get("shift") or "", f"{_fmt(r['auroc'])}{ci}", _fmt(r["fpr95"]), _fmt(r["aupr_in"]), _fmt(r["aupr_out"])]
        lines.append("| " + " | ".join(cells + ([_fmt(r.get("published_auroc")), _fmt_delta(r.get("delta_auroc"))] if has_published else [])) + " |")
    for r in means:
        cells = [f"**{r['scorer']}**", "**mean**", f"**{r['ood']}** ({r['n_pairs']} pairs)", "", f"**{_fmt(r['auroc'])}**", _fmt(r["fpr95"]),
                 _fmt(r["aupr_in"]), _fmt(r["aupr_out"])]
        pub = f"{_fmt(r.get('published_auroc'))} ({r['n_published_pairs']} pairs)" if r.get("published_auroc") is not None else ""
        lines.append("| " + " | ".join(cells + ([pub, _fmt_delta(r.get("delta_auroc"))] if has_published else [])) + " |")
    lines.append("")
    lines.append("Scores are −log-likelihood under the detector (higher = more anomalous); OOD is the positive class for AUROC, FPR@95TPR and "
                 "AUPR-Out, ID for AUPR-In.")
    if has_published:
        where = "; ".join(f"{name}: {source}" for name, source in (published_sources or {}).items())
        lines.append(f"Published column ({where}; shown only beside a base model trained on the same data). A mean row's published value "
                     "and Δ cover only the pairs that have both numbers (their count in brackets); our own mean covers all its pairs.")
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: list[dict], means: list[dict], extra: dict, title: str = "", published_sources: dict[str, str] | None = None) -> str:
    """results.csv, results.md and results.json in `out`; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(out / "results.json", partial=[out / "results.csv", out / "results.md", out / "results.json"]):
        return _write_results(out, rows, means, extra, title, published_sources)


def _write_results(out: Path, rows: list[dict], means: list[dict], extra: dict, title: str, published_sources: dict[str, str] | None) -> str:
    with open(out / "results.csv", "w", newline="") as f:
        fields = COLUMNS + ["n_pairs", "n_published_pairs"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows + means:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    md = to_markdown(rows, means, title, published_sources)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"rows": rows, "means": means, **extra}, indent=2, default=str))
    return md


def _save(fig, path: Path) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc(path: Path, scorer: str, id_name: str, curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> Path:
    """ROC curves of every OOD set against one ID set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for ood, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{ood} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="FPR (ID flagged)", ylabel="TPR (OOD flagged)", title=f"{scorer}: ID = {id_name}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def score_axis(scores: np.ndarray) -> str:
    """'linear', 'log' or 'symlog': a log scale when the scores span more than two decades, so that
    far-OOD scores (hundreds to thousands) do not squash ID and near-OOD into one bar."""
    a = np.abs(scores[np.isfinite(scores)])
    if len(a) == 0 or a.max() == 0:
        return "linear"
    floor = max(float(np.quantile(a, 0.05)), 1e-12)
    if np.log10(a.max() / floor) <= 2:
        return "linear"
    return "log" if scores.min() > 0 else "symlog"


def plot_histograms(path: Path, scorer: str, id_name: str, id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> Path:
    """Score histograms of the ID test set and every OOD set on shared bins; a log or symlog axis when
    the scores span more than two decades."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = np.concatenate([id_scores, *ood_scores.values()])
    axis = score_axis(everything)
    lo, hi = float(everything.min()), float(everything.max())
    if hi <= lo:
        hi = lo + 1
    if axis == "log":
        bins = np.geomspace(lo, hi, 60)
    elif axis == "symlog":
        linthresh = max(float(np.quantile(np.abs(everything), 0.05)), 1e-3)
        forward = lambda v: np.sign(v) * np.log10(1 + np.abs(v) / linthresh)  # noqa: E731
        inverse = lambda u: np.sign(u) * linthresh * (10 ** np.abs(u) - 1)  # noqa: E731
        bins = inverse(np.linspace(forward(lo), forward(hi), 60))
    else:
        bins = np.linspace(lo, hi, 50)
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    ax.hist(id_scores, bins=bins, alpha=0.6, label=f"{id_name} (ID test)", color="k")
    for name, scores in ood_scores.items():
        ax.hist(scores, bins=bins, alpha=0.45, label=name)
    if axis == "log":
        ax.set_xscale("log")
    elif axis == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh)
    ax.set(xlabel=f"anomaly score (−log-likelihood){'' if axis == 'linear' else f', {axis} axis'}", ylabel="images", title=f"{scorer}: ID = {id_name}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_auroc_heatmap(path: Path, scorer: str, rows: list[dict], ids: list[str], oods: list[str]) -> Path:
    """AUROC of every (ID, OOD) pair of one scorer as an annotated ID × OOD grid (0.5 = chance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(ids), len(oods)), np.nan)
    for r in rows:
        grid[ids.index(r["id"]), oods.index(r["ood"])] = r["auroc"]
    fig, ax = plt.subplots(figsize=(1.1 * len(oods) + 2.2, 0.8 * len(ids) + 1.6), dpi=120)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=1.0)
    for i in range(len(ids)):
        for j in range(len(oods)):
            ax.text(j, i, "—" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(oods)), oods, rotation=30, ha="right")
    ax.set_yticks(range(len(ids)), ids)
    ax.set(xlabel="OOD set", ylabel="ID set", title=f"{scorer}: AUROC")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def write_ablation(out: Path, rows: list[dict], pairs: list[str], reference: str | None = None) -> None:
    """ablation.{csv,md,json}: a row per setting, a column per pair, the means with their intervals, the network
    evaluations per image and, against a reference row, Δ mean AUROC with its paired interval."""
    out.mkdir(parents=True, exist_ok=True)
    groups = [g for g in ("near", "far", "all") if f"mean_{g}" in rows[0]]
    has_delta = any("delta" in r for r in rows)
    fields = ["setting", "scorer", "evaluations_per_image", "forward_equivalents_per_image", *pairs, *[f"mean_{g}" for g in groups]]
    with open(out / "ablation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields + [f"mean_{g}_ci" for g in groups] + (["delta_group", "delta", "delta_low", "delta_high"] if has_delta else []))
        for r in rows:
            delta = [r.get("delta_group"), *r["delta"]] if has_delta else []
            w.writerow([r.get(k) for k in fields] + [r.get(f"mean_{g}_ci") for g in groups] + delta)
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda r, g: f" [{r[f'mean_{g}_ci'][0]:.3f}, {r[f'mean_{g}_ci'][1]:.3f}]" if r.get(f"mean_{g}_ci") else ""  # noqa: E731
    dgroup = rows[0].get("delta_group", "near")
    head = ["setting", "scorer", "network evals / image", "forward-equivalents / image", *pairs, *[f"mean {g}" for g in groups]]
    head += [f"Δ mean {dgroup} [95% CI]"] if has_delta else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["setting"], r["scorer"], str(r.get("evaluations_per_image", "")), f"{_cost(r):g}", *[fmt(r.get(p)) for p in pairs],
                 *[f"**{fmt(r[f'mean_{g}'])}**{ci(r, g)}" for g in groups]]
        if has_delta:
            d, lo, hi = r["delta"]
            cells.append(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "AUROC (OOD positive) per ID→OOD pair; mean rows with a 95% bootstrap interval of the mean (each set's images redrawn once "
              "per resample, shared by every pair that uses the set)."]
    if has_delta:
        lines.append(f"Δ: mean {dgroup}-shift AUROC minus that of the reference row `{reference}`, with a 95% paired bootstrap interval "
                     "(the same images and the same per-set resamples for both rows, so it is the interval of the difference).")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps({"pairs": pairs, "reference": reference, "rows": rows}, indent=2, default=str))


def _cost(row: dict) -> float:
    """A row's cost in forward-equivalents per image (network evaluations in tables written before they were priced)."""
    return float(row.get("forward_equivalents_per_image") or row["evaluations_per_image"])


def plot_cost(path: Path, rows: list[dict], benchmark: str, reference: str | None = None) -> Path:
    """Mean near-shift AUROC (bootstrap interval as error bars) against forward-equivalents per image (network
    evaluations, a pass that also differentiates priced at its measured cost), one line per group of settings (a
    scorer and its cost knob)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = "near" if "mean_near" in rows[0] else "all"
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=130)
    for name in dict.fromkeys(r["group"] for r in rows if r.get("group")):
        mine = sorted((r for r in rows if r.get("group") == name), key=_cost)
        x = [_cost(r) for r in mine]
        y = [r[f"mean_{group}"] for r in mine]
        err = [[r[f"mean_{group}"] - r[f"mean_{group}_ci"][0] for r in mine], [r[f"mean_{group}_ci"][1] - r[f"mean_{group}"] for r in mine]] \
            if all(r.get(f"mean_{group}_ci") for r in mine) else None
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, lw=1.2, label=name)
    ref = next((r for r in rows if r["setting"] == reference), None)
    if ref is not None:
        ax.scatter([_cost(ref)], [ref[f"mean_{group}"]], s=160, facecolors="none", edgecolors="k", zorder=5,
                   label=f"default: {ref['setting']}")
    ax.set_xscale("log")
    costs = sorted({_cost(r) for r in rows if r.get("group")})
    ax.set_xticks(costs, [f"{c:g}" for c in costs], fontsize=7)
    ax.minorticks_off()
    ax.set(xlabel="forward-equivalents per image (log scale; a pass with a vJP or JVP counts its measured cost)",
           ylabel=f"mean {group}-shift AUROC (95% bootstrap interval)",
           title=f"{benchmark}: AUROC against cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_ablation(path: Path, rows: list[dict], pairs: list[str], benchmark: str) -> Path:
    """Per-pair AUROC per setting: one line per setting over the pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(pairs) + 2), 4), dpi=120)
    for r in rows:
        ax.plot(range(len(pairs)), [r.get(p, np.nan) for p in pairs], marker="o", label=f"{r['scorer']}: {r['setting']} (mean {r['mean_all']:.3f})")
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xticks(range(len(pairs)), pairs, rotation=40, ha="right", fontsize=7)
    ax.set(ylabel="AUROC", ylim=(0, 1.02), title=f"{benchmark}: AUROC per pair and setting")
    ax.legend(fontsize=6)
    return _save(fig, path)
