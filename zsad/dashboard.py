"""`zsad dashboard`: a saved W&B workspace and a report template for zsad runs, built with W&B's own API
(wandb-workspaces), so no user has to build the same panels by hand.

The panels reference exactly the keys zsad logs: training (`train/loss`, `train/lr`,
`train/images_per_sec`, `samples/ema`) and evaluation (`ood/results`, `ood/<scorer>/<id>/<ood>/auroc`,
`ood/<scorer>/mean/<group>/auroc`, `plots/{auroc,roc,hist}_…`). Per-pair keys come from a benchmark
config (`conf/eval/paper12.yaml` by default)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from zsad.errors import ConfigError

TRAIN_SCALARS = ["train/loss", "train/lr", "train/images_per_sec"]
TRAIN_MEDIA = ["samples/ema"]
RESULTS_TABLE = "ood/results"
DEFAULT_BENCHMARK = Path(__file__).resolve().parents[1] / "conf" / "eval" / "paper12.yaml"


@dataclass
class DashboardSpec:
    """What the dashboard shows, as logged keys (the part a test can check against a real run)."""

    scorers: list[str]
    pairs: list[tuple[str, str]]
    groups: list[str]
    ids: list[str]
    train_scalars: list[str] = field(default_factory=lambda: list(TRAIN_SCALARS))
    train_media: list[str] = field(default_factory=lambda: list(TRAIN_MEDIA))

    def pair_keys(self, scorer: str) -> list[str]:
        return [f"ood/{scorer}/{i}/{o}/auroc" for i, o in self.pairs]

    def mean_keys(self, scorer: str) -> list[str]:
        return [f"ood/{scorer}/mean/{g}/auroc" for g in self.groups]

    def media_keys(self, scorer: str) -> list[str]:
        return [f"plots/auroc_{scorer}"] + [f"plots/{kind}_{scorer}_{i}" for i in self.ids for kind in ("roc", "hist")]

    def all_keys(self) -> list[str]:
        keys = [*self.train_scalars, *self.train_media, RESULTS_TABLE]
        for s in self.scorers:
            keys += self.pair_keys(s) + self.mean_keys(s) + self.media_keys(s)
        return keys


def spec_from_config(config: str | Path | None = None) -> DashboardSpec:
    """Scorers, ordered pairs and shift groups of a benchmark config (`zsad evaluate -c …`)."""
    from zsad.config import load_config
    from zsad.config.schema import EvalConfig
    from zsad.scoring.scorers import RECOMMENDED_SCORER

    cfg = load_config(config or DEFAULT_BENCHMARK, ["backbone.path=unused"], EvalConfig)
    pairs = [(str(i), str(o)) for i in cfg.id for o in cfg.ood if o != i]
    groups = ["all"] + (["far", "near"] if cfg.far_pairs else [])
    return DashboardSpec([str(s.name or RECOMMENDED_SCORER) for s in cfg.scorers], pairs, groups, [str(i) for i in cfg.id])


def build_workspace(spec: DashboardSpec, entity: str, project: str):
    """The saved workspace: results, one section per scorer, training."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name="Results", is_open=True, panels=[
        wr.WeavePanelSummaryTable(table_name=RESULTS_TABLE),
        wr.BarPlot(title="mean AUROC per scorer", metrics=[k for s in spec.scorers for k in spec.mean_keys(s)], range_x=(0.0, 1.0)),
    ])]
    for scorer in spec.scorers:
        sections.append(ws.Section(name=f"OOD: {scorer}", is_open=True, panels=[
            wr.BarPlot(title=f"{scorer}: AUROC per (ID, OOD) pair", metrics=spec.pair_keys(scorer), range_x=(0.0, 1.0)),
            wr.MediaBrowser(title=f"{scorer}: AUROC heat map, ROC curves, score histograms", media_keys=spec.media_keys(scorer), num_columns=3),
        ]))
    sections.append(ws.Section(name="Training", is_open=True, panels=[
        wr.LinePlot(title="loss", x="Step", y=["train/loss"], smoothing_factor=0.8),
        wr.LinePlot(title="learning rate", x="Step", y=["train/lr"]),
        wr.LinePlot(title="images/s", x="Step", y=["train/images_per_sec"]),
        wr.MediaBrowser(title="EMA samples", media_keys=spec.train_media),
    ]))
    return ws.Workspace(entity=entity, project=project, name="zsad", sections=sections)


def build_report(spec: DashboardSpec, entity: str, project: str, online: bool = False):
    """A report template for one benchmark run: what was measured, the table, the per-pair AUROC."""
    import wandb_workspaces.reports.v2 as wr

    # Offline, the run set stays unbound (binding it looks the project up on the W&B server).
    runsets = [wr.Runset(entity=entity, project=project, name="evaluation runs") if online else wr.Runset(name="evaluation runs")]
    blocks = [
        wr.H1("zsad benchmark"),
        wr.P("Zero-shot OOD detection: one diffusion base model, features along a diffusion path, a detector fitted "
             "per ID set. Scores are −log-likelihood (higher = more anomalous); OOD is the positive class for AUROC."),
        wr.H2("Results"),
        wr.PanelGrid(runsets=runsets, panels=[wr.WeavePanelSummaryTable(table_name=RESULTS_TABLE)]),
    ]
    for scorer in spec.scorers:
        blocks += [wr.H2(scorer), wr.PanelGrid(runsets=runsets, panels=[
            wr.BarPlot(title=f"{scorer}: AUROC per pair", metrics=spec.pair_keys(scorer), range_x=(0.0, 1.0)),
            wr.MediaBrowser(title=f"{scorer}: plots", media_keys=spec.media_keys(scorer)),
        ])]
    return wr.Report(project=project, entity=entity, title="zsad benchmark", description="Template written by `zsad dashboard`.", blocks=blocks)


def definitions(spec: DashboardSpec, entity: str, project: str) -> dict:
    """The workspace and report as W&B's own JSON models (what `--dry-run` writes)."""
    workspace = build_workspace(spec, entity, project)._to_model().model_dump(mode="json", by_alias=True)
    report = build_report(spec, entity, project)._to_model().model_dump(mode="json", by_alias=True)
    return {"workspace": workspace, "report": report, "keys": spec.all_keys()}


def create_dashboard(entity: Optional[str], project: str, dry_run: bool, out: str | Path, config: str | Path | None = None) -> dict:
    """Online: save the workspace and the report in W&B and print their URLs. Dry run: write JSON."""
    spec = spec_from_config(config)
    if dry_run:
        defs = definitions(spec, entity or "ENTITY", project)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "workspace.json").write_text(json.dumps(defs["workspace"], indent=1))
        (out / "report.json").write_text(json.dumps(defs["report"], indent=1))
        (out / "keys.json").write_text(json.dumps(defs["keys"], indent=1))
        print(f"workspace and report definitions written to {out}/ (workspace.json, report.json, keys.json)")
        return defs
    try:
        import wandb

        entity = entity or wandb.Api().default_entity
    except Exception as err:  # noqa: BLE001 - not logged in, offline, no network
        raise ConfigError(f"W&B is not reachable or you are not logged in ({type(err).__name__}). Run `wandb login`, "
                          "or use --dry-run to write the definitions offline.") from None
    workspace = build_workspace(spec, entity, project).save()
    report = build_report(spec, entity, project, online=True).save()
    print(f"workspace: {workspace.url}\nreport:    {report.url}")
    return {"workspace": workspace.url, "report": report.url}
