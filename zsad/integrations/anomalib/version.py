"""Which anomalib the integration is tested with, and a clear error when the installed one differs.

Read from the installed distribution's metadata, so the check itself never imports anomalib.
"""

from __future__ import annotations

from importlib import metadata
from typing import Optional

from zsad.errors import ZsadError

# Keep in step with the `anomalib` extra in pyproject.toml: the range pip installs is the range tested.
MINIMUM, BELOW = (2, 7), (2, 8)
TESTED = "2.7.0"
REQUIREMENT = f"anomalib>={MINIMUM[0]}.{MINIMUM[1]},<{BELOW[0]}.{BELOW[1]}"
INSTALL = 'pip install "zsad[anomalib]"'


class AnomalibVersionError(ZsadError, ImportError):
    """anomalib is missing, cannot be imported, or is a version the integration was not tested with."""


def installed_version() -> Optional[str]:
    """The installed anomalib's version string, or None when it is not installed."""
    try:
        return metadata.version("anomalib")
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, ...) of a version string; pre-release and local parts are ignored."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release
    except InvalidVersion:
        raise AnomalibVersionError(f"The installed anomalib reports an unreadable version {version!r}; zsad's anomalib integration needs "
                                   f"{REQUIREMENT} (tested with {TESTED}): {INSTALL}") from None


def check_version(version: Optional[str]) -> str:
    """`version` when it lies in the tested range; otherwise an error that names the range and the install command."""
    if version is None:
        raise AnomalibVersionError(f"zsad's anomalib integration needs {REQUIREMENT} (tested with {TESTED}), and anomalib is not installed. "
                                   f"Install it with: {INSTALL}")
    release = _release(version)
    if not MINIMUM <= release[:2] < BELOW:
        raise AnomalibVersionError(f"zsad's anomalib integration needs {REQUIREMENT} (tested with {TESTED}); anomalib {version} is installed. "
                                   f"Install the tested range with: {INSTALL}")
    return version


def require_anomalib() -> str:
    """The installed anomalib version, checked against the tested range."""
    return check_version(installed_version())
