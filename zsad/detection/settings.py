"""One settings object for a detector (issue 27 §4): `zsad fit`'s flags, `zsad test`'s settings (IndustrialSettings
extends it), `AnomalyDetector.fit`'s keywords and the anomalib model's arguments are its fields. Each default is
here and nowhere else, so a new option is one field (and a flag where a command shows it).

    settings = DetectorSettings(tile_stride=32, false_alarm_rate=0.01)
    det = AnomalyDetector.fit("normal/", backbone="zsad-demo", settings=settings)
    det = AnomalyDetector.fit("normal/", backbone="zsad-demo", tile_stride=32)   # the same: keywords replace fields
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from zsad.errors import ConfigError
from zsad.scoring.scorers import RECOMMENDED_SCORER

DETECTOR_KINDS = ("gmm", "softmin_knn")  # the detectors that read any scorer's tile features (kde, scoped_kde: their scorer's only)


@dataclass(frozen=True)
class DetectorSettings:
    """How a detector is fitted (the first group changes what is computed) and where it runs (the second does not)."""

    scorer: str = RECOMMENDED_SCORER
    scorer_options: Optional[dict] = None  # the scorer's own options, e.g. {"steps": 5}
    # what is fitted on the tile features: gmm (a Gaussian mixture) or softmin_knn (UFCOD's soft-min kNN, its references
    # picked at every tile position); None: the scorer's own (a Gaussian mixture for diffpath_fused)
    detector_kind: Optional[str] = None
    preset: str = "default"  # zsad.detection.presets: fills the tile stride and scorer options left unset
    false_alarm_rate: float = 0.05  # α: the share of normal images flagged, at most
    shots: Optional[int] = None  # fit on this many normal images only (calibration unchanged)
    working_size: Optional[int] = None  # the longer side; None: the images' median longer side, at most 256 (sizing.py)
    tile_stride: Optional[int] = None  # pixels between tiles; None: the preset's (half a tile by default)
    map_combination: Optional[str] = None  # tile, tile+pixel or pixel; None: tile+pixel where the scorer has pixel maps
    aggregation: str = "max"  # image score: max of the map, or top_k (the mean of its top `top_k` share of pixels)
    top_k: float = 0.1
    blend: str = "max"  # overlapping tiles: the per-pixel maximum, hann or mean (maps.py)
    tile_position: bool = False  # the tile's centre as two more features (a GMM's only)
    bit_depth: Optional[int] = None  # None: decided from the normal images' largest value (inputs.py)
    seed: int = 0
    precision: str = "32-true"
    skip_corrupt: bool = False  # unreadable images are counted and dropped before the split, instead of an error
    require_rate: bool = True  # refuse a calibration part too small for α (zsad test keeps the row without rates instead)
    device: str = "auto"
    batch_size: int = 16  # images per batch (a batch's tiles share network calls)
    # rows per network call; None: detection/model.py's default_network_batch (a CPU: 64 for small networks, about the
    # image's tiles for large ones; a GPU: the scorer's own)
    network_batch: Optional[int] = None
    cache_dir: Optional[str] = "outputs/feature_cache"

    def __post_init__(self) -> None:
        if self.detector_kind is not None and self.detector_kind not in DETECTOR_KINDS:
            raise ConfigError(f"detector_kind (--detector-kind) must be one of {', '.join(DETECTOR_KINDS)}, or left unset for the scorer's "
                              f"own; got {self.detector_kind!r}.")
        if self.scorer_options is not None:  # a copy: the caller's dict, changed later, does not change these settings
            if not isinstance(self.scorer_options, Mapping):
                raise ConfigError(f"scorer_options must map option names to values, e.g. {{'steps': 5}}; got {self.scorer_options!r}.")
            object.__setattr__(self, "scorer_options", copy.deepcopy(dict(self.scorer_options)))

    def __hash__(self) -> int:
        """Frozen settings are hashable (a cache key, a set member) although `scorer_options` is a dict; a subclass sets
        `__hash__ = DetectorSettings.__hash__`, since a frozen dataclass would generate one that fails on the dict."""
        return hash(tuple((f.name, _hashable(getattr(self, f.name))) for f in dataclasses.fields(self)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(DetectorSettings))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """{field: default} of every detector setting."""
        return {f.name: f.default for f in dataclasses.fields(DetectorSettings)}

    def replace(self, **options: Any) -> "DetectorSettings":
        """A copy with `options` replacing fields; an unknown name is an error that lists the known ones."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"Unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}. "
                              f"Known: {', '.join(known)} ({type(self).__module__}.{type(self).__name__}).")
        return dataclasses.replace(self, **options)

    def detector_part(self) -> "DetectorSettings":
        """Only the detector's own fields, as a plain DetectorSettings (for a subclass such as IndustrialSettings)."""
        return DetectorSettings(**{name: getattr(self, name) for name in DetectorSettings.names()})


def _hashable(value: Any) -> Any:
    """A dict or list as a tuple (sorted by key), recursively; any other value as it is."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value
