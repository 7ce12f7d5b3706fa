"""zsad without anomalib (`pip install zsad` without the `anomalib` extra): it imports, every command's help runs, and it
pays none of anomalib's import time; the integration then says what to install.

anomalib is hidden from a subprocess by a `sitecustomize` on PYTHONPATH that puts a meta-path finder first: any import of
`anomalib` (or a submodule) raises ModuleNotFoundError and is written to a log, so a caught import still fails the test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKER = '''
import importlib.abc, os, sys

class _HideAnomalib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "anomalib" or name.startswith("anomalib."):
            with open(os.environ["ZSAD_BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, _HideAnomalib())
'''


@pytest.fixture
def hidden(tmp_path) -> dict:
    """An environment in which anomalib cannot be imported, and the log of attempts."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "ZSAD_BLOCKED_LOG": str(log),
           "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    return {"env": env, "log": log}


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def _subcommands() -> list[str]:
    from zsad.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(actions[0].choices)


def test_the_blocker_hides_anomalib(hidden):
    """The control: without it the other tests could pass on a machine where the blocker did nothing."""
    proc = _run([sys.executable, "-c", "import anomalib"], hidden["env"])
    assert proc.returncode != 0 and "hidden by the test" in proc.stderr
    assert hidden["log"].read_text().splitlines() == ["anomalib"]


def test_zsad_imports_and_every_command_helps_without_anomalib(hidden):
    zsad = Path(sys.executable).with_name("zsad")
    assert zsad.is_file(), f"the console script is installed beside {sys.executable}"
    commands = _subcommands()
    assert {"fit", "score", "test", "evaluate", "demo"} <= set(commands)
    for argv in ([], *([c] for c in commands)):
        proc = _run([str(zsad), *argv, "--help"], hidden["env"])
        assert proc.returncode == 0 and "usage: zsad" in proc.stdout, (argv, proc.stderr[-2000:])
    code = "import sys, zsad, zsad.cli; zsad.AnomalyDetector; assert 'anomalib' not in sys.modules"
    proc = _run([sys.executable, "-c", code], hidden["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not hidden["log"].exists(), f"zsad tried to import {hidden['log'].read_text().split()}"


def test_import_zsad_does_not_load_anomalib_where_it_is_installed():
    pytest.importorskip("anomalib")
    code = ("import sys, zsad, zsad.cli, zsad.integrations.anomalib, zsad.integrations.anomalib.outputs; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'anomalib'], 'anomalib was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_integration_says_what_to_install_without_anomalib(hidden):
    code = ("from zsad.integrations.anomalib import AnomalibVersionError\n"
            "try:\n    from zsad.integrations.anomalib import ConformalPostProcessor\n"
            "except AnomalibVersionError as err:\n    print(err)\nelse:\n    raise SystemExit('no error')\n")
    proc = _run([sys.executable, "-c", code], hidden["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "needs anomalib>=2.7,<2.8" in proc.stdout and 'pip install "zsad[anomalib]"' in proc.stdout, proc.stdout
