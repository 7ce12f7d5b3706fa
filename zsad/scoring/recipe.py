"""The feature recipe: everything that makes a feature, as one typed record (docs/method.md §2).

Every command that fits a detector writes the recipe beside it; every command that uses a detector reads
it and refuses a mismatch. The feature cache keys its entries by the same record's identity fields, so the
cache and the detectors can never disagree about what a feature is.

`check(current)` treats fields by kind:
* identity fields (weights sha256 and model config, preprocessing, scorer name, options and version, seed
  rule, precision, TF32, fast path, compile mode) must be equal, or the detector is refused;
* the device kind is hashed too (features differ in the last bits between devices), but another device
  only warns, naming both;
* `network_batch` and the weights' path are recorded, never compared: the same sha256 at another path
  is the same model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from zsad.errors import ZsadError

RECIPE_FORMAT = 1
# How a per-image noise seed is made (docs/method.md §2); a new rule gets a new name.
SEED_RULE = "sha256(seed, float32 pixels) v1"
IDENTITY_FIELDS = (
    "weights_sha256", "model_config", "preprocessing", "scorer", "scorer_version", "seed", "seed_rule",
    "device", "precision", "tf32", "fast_path", "compile",
)
# Fields whose difference is a warning, not a refusal.
WARN_FIELDS = ("device",)


class RecipeMismatchError(ZsadError, ValueError):
    """A detector's recorded recipe differs from how features would be made now."""


@dataclass(frozen=True)
class FeatureRecipe:
    """What made a detector's features. `scorer` holds the scorer's options (with its name)."""

    scorer: dict
    scorer_version: int | str  # Scorer.version (a composite string for scorers built of others)
    preprocessing: dict  # image_size, center_crop; tiles (working_size, tile, stride) when tiled
    seed: int
    weights_sha256: str
    model_config: Any = None
    weights_path: Optional[str] = None  # recorded, not compared
    weights_source: Optional[str] = None  # the name or hf:// address it came from, to fetch it again elsewhere
    weights_format: Optional[str] = None
    use_ema: Optional[bool] = None
    trained_on: str = ""
    seed_rule: str = SEED_RULE
    device: str = "cpu"
    precision: str = "32-true"
    tf32: bool = False
    fast_path: bool = True
    compile: Optional[str] = None
    network_batch: Optional[int] = None  # recorded, not compared: speed and memory only
    extra: dict = field(default_factory=dict)  # what a command adds for people (the ID set, ...), never compared

    @property
    def scorer_name(self) -> str:
        return str(self.scorer.get("name", ""))

    def identity(self) -> dict:
        """The fields that change a feature (hashed into cache keys; `use_ema` picks the weights inside the file)."""
        out = {name: getattr(self, name) for name in IDENTITY_FIELDS}
        out["use_ema"] = self.use_ema
        return out

    def key(self, *extra: Any) -> str:
        """sha256 of the identity fields (and of `extra`, e.g. a dataset's file identity)."""
        payload = {"recipe_format": RECIPE_FORMAT, "identity": self.identity(), "extra": list(extra)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"recipe_format": RECIPE_FORMAT, **asdict(self)}

    def write(self, path: str | Path) -> Path:
        """Write the recipe as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str = "the recipe") -> "FeatureRecipe":
        """A recipe from its JSON form; an old or damaged record says what to do (refit)."""
        if not isinstance(data, dict):
            raise RecipeMismatchError(f"{source} is not a feature recipe (a JSON object was expected). Refit the detector.")
        if data.get("scorer_version") is None:
            raise RecipeMismatchError(
                f"{source} records no scorer version (written by an older zsad), so zsad cannot tell whether today's scorer "
                "computes the same features. Refit the detector with this zsad (`zsad fit` or `zsad evaluate`)."
            )
        known = {f.name for f in fields(cls)}
        required = [n for n in ("scorer", "scorer_version", "preprocessing", "seed", "weights_sha256") if n not in data]
        if required:
            raise RecipeMismatchError(f"{source} lacks {', '.join(required)}: it is damaged or not a recipe. Refit the detector.")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: str | Path) -> "FeatureRecipe":
        """Read a recipe file; a missing or unreadable one names the file and what to do."""
        path = Path(path)
        if not path.is_file():
            raise RecipeMismatchError(f"No feature recipe at {path}: the detector cannot be used without knowing how its features were made. Refit it.")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RecipeMismatchError(f"{path} is damaged ({type(err).__name__}: {err}). Refit the detector, or restore the file.") from None
        return cls.from_dict(data, str(path))

    def check(self, current: "FeatureRecipe", what_to_do: str = "Refit the detector with this zsad, or use the settings it records.") -> list[str]:
        """Refuse `current` when an identity field differs (the error names the field, both values and what
        to do); return the warnings for fields that may differ (another device kind)."""
        warnings = []
        for name in IDENTITY_FIELDS:
            recorded, now = getattr(self, name), getattr(current, name)
            if _normal(recorded) == _normal(now):
                continue
            if name in WARN_FIELDS:
                warnings.append(f"the detector's features were computed on '{recorded}' and these on '{now}': scores agree only up to "
                                "float rounding across devices.")
                continue
            label = {"weights_sha256": "the backbone weights (sha256)", "scorer_version": f"the version of scorer {self.scorer_name}"}.get(name, name)
            raise RecipeMismatchError(
                f"The detector's feature recipe differs in {label}: recorded {_show(recorded)}, today {_show(now)}. "
                f"Its features would not be comparable with the ones computed now. {what_to_do}"
            )
        if self.use_ema != current.use_ema:
            raise RecipeMismatchError(f"The detector's feature recipe differs in use_ema: recorded {self.use_ema}, today {current.use_ema}. {what_to_do}")
        return warnings


def _normal(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def device_kind(device: Any) -> str:
    """'cpu', or 'cuda:<GPU model>' (features differ in the last bits between GPU models)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def recipe_for(
    scorer: Any,
    backbone: Any,
    preprocessing: dict,
    seed: int,
    device: Any = "cpu",
    precision: str = "32-true",
    tf32: bool = False,
    fast_path: bool = True,
    compile: Optional[str] = None,
    extra: Optional[dict] = None,
) -> FeatureRecipe:
    """The recipe of `scorer` on `backbone` (a loaded zsad Backbone) with this preprocessing and runtime."""
    identity = dict(getattr(backbone, "identity", {}) or {})
    return FeatureRecipe(
        scorer=scorer.options(),
        scorer_version=scorer.version,
        preprocessing={k: preprocessing.get(k) for k in sorted(preprocessing) if k != "options"},
        seed=int(seed),
        weights_sha256=str(identity.get("sha256") or getattr(backbone, "fingerprint", "")),
        model_config=identity.get("model_config"),
        weights_path=getattr(backbone, "path", None),
        weights_source=getattr(backbone, "source", None),
        weights_format=identity.get("format"),
        use_ema=identity.get("use_ema"),
        trained_on=str(getattr(backbone, "trained_on", "") or ""),
        device=device_kind(device),
        precision=str(precision),
        tf32=bool(tf32),
        fast_path=bool(fast_path),
        compile=compile,
        network_batch=scorer.network_batch_for(device),
        extra=dict(extra or {}),
    )
