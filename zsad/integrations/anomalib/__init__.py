"""zsad in anomalib (docs/anomalib.md): zsad's diffusion detector as an anomalib model, and a split-conformal threshold
with a stated false-alarm rate for any anomalib model.

    from zsad.integrations.anomalib import ConformalPostProcessor, Zsad
    model = Zsad(backbone="zsad-demo", false_alarm_rate=0.05)
    model = Padim(post_processor=ConformalPostProcessor(false_alarm_rate=0.05))

Importing this package needs no anomalib: the conformal state (zsad.detection.calibration) and its outputs (`outputs`) are plain numpy. The first use of
`ConformalPostProcessor` or `Zsad` checks the installed anomalib against the tested range and imports it; a missing, untested or
broken anomalib is an `AnomalibVersionError` that names the range and `pip install "zsad[anomalib]"`.
"""

from __future__ import annotations

from typing import Any

from zsad.integrations.anomalib.version import REQUIREMENT, TESTED, AnomalibVersionError, check_version, installed_version, require_anomalib

_LAZY = {"ConformalPostProcessor": "zsad.integrations.anomalib.conformal", "Zsad": "zsad.integrations.anomalib.model",
         "ZsadPostProcessor": "zsad.integrations.anomalib.model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as err:
            if isinstance(err, AnomalibVersionError):
                raise
            raise AnomalibVersionError(f"anomalib could not be imported ({err}); zsad's anomalib integration needs {REQUIREMENT} (tested with "
                                       f'{TESTED}): pip install "zsad[anomalib]"') from err
        return getattr(module, name)
    raise AttributeError(f"module 'zsad.integrations.anomalib' has no attribute '{name}'")


__all__ = ["ConformalPostProcessor", "Zsad", "ZsadPostProcessor",
           "AnomalibVersionError", "REQUIREMENT", "TESTED", "check_version", "installed_version", "require_anomalib"]
