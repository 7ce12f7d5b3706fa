"""Re-export: errors raised when loading a backbone."""

from zsad.errors import BackboneLoadError

__all__ = ["BackboneLoadError"]
