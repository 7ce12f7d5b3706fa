"""Config loading (OmegaConf) and schemas."""

from zsad.config.loader import load_config, save_config, to_plain
from zsad.errors import ConfigError

__all__ = ["ConfigError", "load_config", "save_config", "to_plain"]
