"""Config loading (OmegaConf) and schemas."""

from zsad.errors import ConfigError

from zsad.config.loader import load_config, save_config, to_plain

__all__ = ["ConfigError", "load_config", "save_config", "to_plain"]
