"""Compose a config from YAML pieces, apply command-line overrides, validate against a schema.

A config file may start with a `defaults:` mapping, group -> name, e.g. `{model: unet_celeba32}`;
each entry loads `<conf root>/<group>/<name>.yaml` under the key `<group>` (a name with a slash,
`{backbone: model/diffpath_celeba32}`, loads `<conf root>/model/diffpath_celeba32.yaml` instead). The file's own keys are
merged on top, then `key=value` overrides. An override whose key is a group folder (`logger=csv`)
selects another file of that group instead.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from zsad.errors import ConfigError


def _valid_keys(schema_cfg: DictConfig, parent: str) -> list[str]:
    node = OmegaConf.select(schema_cfg, parent) if parent else schema_cfg
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _explain(err: OmegaConfBaseException, schema_cfg: DictConfig, source: str) -> ConfigError:
    full_key = str(getattr(err, "full_key", "") or "")
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        parent, _, key = full_key.rpartition(".")
        valid = _valid_keys(schema_cfg, parent)
        near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        where = f"under '{parent}'" if parent else "at the top level"
        hint = f" Did you mean {', '.join(repr(f'{parent}.{n}' if parent else n) for n in near)}?" if near else ""
        return ConfigError(
            f"Unknown config key '{full_key}' (from {source}).{hint} Valid keys {where}: {', '.join(valid)}."
        )
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return ConfigError(f"Wrong value for '{full_key}' (from {source}): {msg}")
    return ConfigError(f"Invalid config (from {source}): {err}")


def _merge(base: DictConfig, piece: Any, schema_cfg: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, piece)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, schema_cfg, source) from None


def _split_overrides(overrides: Iterable[str], conf_root: Path) -> tuple[dict[str, str], list[str]]:
    groups: dict[str, str] = {}
    dotlist: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key=value (e.g. trainer.max_steps=100).")
        key, value = item.split("=", 1)
        if "." not in key and (conf_root / key).is_dir() and (conf_root / key / f"{value}.yaml").is_file():
            groups[key] = value
        else:
            dotlist.append(item)
    return groups, dotlist


def _read_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)  # type: ignore[return-value]
    except Exception as err:  # noqa: BLE001 - YAML syntax errors of every kind
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path} is not valid YAML: {first}. Fix the file (indentation, ':' after keys).") from None


def load_config(path: Optional[str | Path], overrides: Iterable[str] = (), schema: Optional[type] = None) -> DictConfig:
    """Load `path` (None: the schema's defaults only), compose its defaults, apply `key=value` overrides
    and validate against `schema`."""
    if path is None:
        path, raw, conf_root = Path("<defaults>"), OmegaConf.create({}), Path("conf")
    else:
        path = Path(path)
        if not path.is_file():
            siblings = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
            raise ConfigError(f"Config file '{path}' not found." + (f" Files in {path.parent}: {', '.join(siblings)}" if siblings else ""))
        conf_root = path.parent.parent
        raw = _read_yaml(path)
    defaults = dict(raw.pop("defaults", None) or {})
    groups, dotlist = _split_overrides(overrides, conf_root)
    defaults.update(groups)

    schema_cfg = OmegaConf.structured(schema) if schema is not None else OmegaConf.create({})
    cfg = schema_cfg
    for group, name in defaults.items():
        piece_path = conf_root / (f"{name}.yaml" if "/" in str(name) else f"{group}/{name}.yaml")
        if not piece_path.is_file():
            options = sorted(p.stem for p in piece_path.parent.glob("*.yaml"))
            raise ConfigError(f"'{group}: {name}' (in {path}) names {piece_path}, which does not exist. Options: {', '.join(options)}.")
        piece = OmegaConf.create({})
        OmegaConf.update(piece, group, _read_yaml(piece_path), force_add=True)
        cfg = _merge(cfg, piece, schema_cfg, str(piece_path))
    cfg = _merge(cfg, raw, schema_cfg, str(path))
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except Exception as err:  # noqa: BLE001 - OmegaConf and YAML parser errors alike
        raise ConfigError(f"Could not parse overrides {dotlist}: {err}") from None
    cfg = _merge(cfg, cli, schema_cfg, "command-line overrides")
    if schema is not None:
        OmegaConf.set_struct(cfg, True)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config (what actually ran) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    OmegaConf.save(cfg, tmp, resolve=True)
    tmp.replace(path)


def to_plain(cfg: DictConfig) -> dict:
    """A plain, picklable-without-code dict (for checkpoints loaded with weights_only=True)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
