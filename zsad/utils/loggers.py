"""Experiment loggers: W&B (offline unless asked otherwise), CSV, or none; always closed."""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from zsad.errors import ConfigError
from zsad.utils.dist import env_global_rank

WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_mode(logger_cfg) -> str:
    """WANDB_MODE from the environment wins; otherwise the config's mode (offline by default)."""
    return os.environ.get("WANDB_MODE") or str(logger_cfg.mode)


def _run_id(out: Path, resuming: bool) -> str:
    """Reuse the run id of this output folder so a resumed (or requeued) job continues the same W&B run."""
    path = out / WANDB_ID_FILE
    if path.is_file() and (resuming or os.environ.get("SLURM_RESTART_COUNT")):
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id


LOGGER_KINDS = ("wandb", "csv", "none")


def check_logger_kind(logger_cfg) -> str:
    """`logger.kind`, refused with a clear message unless it is one of LOGGER_KINDS."""
    kind = str(logger_cfg.kind)
    if kind not in LOGGER_KINDS:
        raise ConfigError(f"logger.kind must be wandb, csv or none, not '{kind}'.")
    return kind


def build_logger(logger_cfg, out: Path, config: dict, resuming: bool = False, job_type: str = "train") -> list[Logger]:
    """Lightning loggers for `logger.kind` (wandb | csv | none)."""
    kind = check_logger_kind(logger_cfg)
    if kind == "none":
        return []
    if kind == "csv":
        return [CSVLogger(save_dir=str(out), name="csv_logs")]
    mode = wandb_mode(logger_cfg)
    kwargs: dict[str, Any] = dict(
        project=str(logger_cfg.project),
        entity=logger_cfg.entity,
        name=logger_cfg.name,
        save_dir=str(out),
        offline=mode == "offline",
        tags=list(logger_cfg.tags),
        job_type=job_type,
        config=config,
    )
    if mode == "disabled":
        kwargs["mode"] = "disabled"
    if env_global_rank() == 0:
        kwargs.update(id=_run_id(out, resuming), resume="allow")
    os.environ.setdefault("WANDB_SILENT", "true")
    return [WandbLogger(**kwargs)]


def close_loggers(loggers: list[Logger], failed: bool) -> None:
    """Finish every logger; a W&B run is marked failed (exit code 1) when training raised."""
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
        except Exception:  # noqa: BLE001 - closing must not hide the original error
            pass
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
    except ImportError:
        pass


def log_results(loggers: list[Logger], scalars: dict[str, float], tables: Optional[dict[str, tuple[list[str], list[list]]]] = None,
                images: Optional[dict[str, Path]] = None) -> None:
    """Log results through whichever loggers are configured: a W&B run gets the tables, images and scalars
    (also as summary values); any other logger gets the scalars. The one seam between zsad and loggers."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            payload: dict[str, Any] = {key: wandb.Table(columns=columns, data=rows) for key, (columns, rows) in (tables or {}).items()}
            payload.update({key: wandb.Image(str(path)) for key, path in (images or {}).items()})
            run = logger.experiment
            run.log({**payload, **scalars})
            for key, value in scalars.items():
                run.summary[key] = value
        else:
            logger.log_metrics(scalars, step=0)
            logger.save()


def wandb_run_info(loggers: list[Logger]) -> dict | None:
    """Where the W&B run is and, when offline, the command that uploads it (None without a W&B logger)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            folder = Path(run.dir).parent if getattr(run, "dir", None) else None
            offline = bool(getattr(run.settings, "_offline", False)) or (folder is not None and folder.name.startswith("offline-run"))
            return {"folder": str(folder) if folder else None, "offline": offline, "sync": f"wandb sync {folder}" if offline and folder else None,
                    "url": getattr(run, "url", None) if not offline else None}
    return None
