"""Errors a user can cause and fix; the CLI prints their message without a traceback."""


class ZsadError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(ZsadError, ValueError):
    """Unknown key, wrong type or impossible value in a config."""


class DatasetNotFoundError(ZsadError, FileNotFoundError):
    """The dataset's files are not where the config says."""


class CorruptImageError(ZsadError, RuntimeError):
    """An image file could not be decoded."""


class BackboneLoadError(ZsadError, ValueError):
    """The model file is missing, not a checkpoint, unsafe, or does not fit the architecture."""


class UnknownNameError(ZsadError, KeyError):
    """A registry lookup (dataset, scorer, preset) with a name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FeatureError(ZsadError, RuntimeError):
    """Scorer output that cannot be used (e.g. non-finite features)."""


class DataLeakageError(ZsadError, ValueError):
    """ID-fit and ID-test images overlap (the same images on both sides of the detector)."""
