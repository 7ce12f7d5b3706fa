"""zsad: zero-shot image anomaly detection with diffusion models (DiffPath, DiffPathV2).

Public API: `AnomalyDetector` (fit on normal images, score, localise), `DetectorSettings` (how), `load_backbone`, `build_scorer`,
`GMMDetector`, `ood_metrics`. Heavy modules import lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "AnomalyDetector": ("zsad.detection.model", "AnomalyDetector"),
    "DetectorSettings": ("zsad.detection.settings", "DetectorSettings"),
    "load_backbone": ("zsad.diffusion.loading", "load_backbone"),
    "build_scorer": ("zsad.scoring.scorers", "build_scorer"),
    "GMMDetector": ("zsad.scoring.detector", "GMMDetector"),
    "KDEDetector": ("zsad.scoring.detector", "KDEDetector"),
    "ood_metrics": ("zsad.evaluation.metrics", "ood_metrics"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'zsad' has no attribute '{name}'")


__all__ = list(_LAZY)
