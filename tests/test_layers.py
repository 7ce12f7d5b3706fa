"""The package's layers point one way: data → diffusion → training → scoring → detection → evaluation → cli,
on a foundation (errors, utils, config) that imports none of them. Every import counts, also the ones inside
functions. And the evaluate path stays a sequence of short stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zsad"
LAYERS = ["foundation", "data", "diffusion", "training", "scoring", "detection", "evaluation", "cli", "integrations"]
FOUNDATION = {"errors", "utils", "config"}
TOP = {"cli", "demo", "dashboard"}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside zsad (None for the package facade `zsad` itself)."""
    parts = module.split(".")
    if parts[0] != "zsad" or len(parts) == 1:
        return None
    head = parts[1]
    if head in FOUNDATION:
        return "foundation"
    if head in TOP:
        return "cli"
    return head if head in LAYERS else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every zsad import in a file, at any depth."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("zsad")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zsad") and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(module_name(path))
        if own is None:
            continue
        for line, target in imports_of(path):
            other = layer_of(target)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {target} ({other})")
    return problems


def test_every_module_belongs_to_a_layer():
    unknown = [module_name(p) for p in PACKAGE.rglob("*.py") if module_name(p) != "zsad" and layer_of(module_name(p)) is None]
    assert not unknown, f"modules outside every layer: {unknown}"


def test_no_lower_layer_imports_a_higher_one():
    problems = upward_imports()
    assert not problems, "imports running back up the layers:\n" + "\n".join(problems)


def test_the_check_can_fail(tmp_path, monkeypatch):
    """A scoring module that imports evaluation is reported."""
    bad = PACKAGE / "scoring" / "_layer_probe.py"
    bad.write_text("def f():\n    from zsad.evaluation.metrics import auroc\n")
    try:
        problems = upward_imports()
    finally:
        bad.unlink()
    assert any("_layer_probe.py:2: scoring imports zsad.evaluation.metrics" in p for p in problems), problems


@pytest.mark.parametrize("layer,forbidden", [("scoring", ("detection", "evaluation")), ("detection", ("evaluation",))])
def test_named_rules_of_the_issue(layer, forbidden):
    for path in (PACKAGE / layer).rglob("*.py"):
        for line, target in imports_of(path):
            assert layer_of(target) not in forbidden, f"{path}:{line} imports {target}"


def test_the_evaluate_path_is_short_stages():
    """No function on the evaluate path is longer than 40 lines."""
    long = []
    for name in ("evaluate.py", "ablate.py"):
        tree = ast.parse((PACKAGE / "evaluation" / name).read_text())
        long += [f"{name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 40]
    assert not long, long


def test_no_module_outside_the_scorers_names_a_scorer():
    """The pipeline never branches on a scorer's name: names live in zsad/scoring/scorers/ only."""
    from zsad.scoring.scorers import SCORERS

    named = []
    for path in [*(PACKAGE / "scoring").rglob("*.py"), *(PACKAGE / "detection").rglob("*.py"), *(PACKAGE / "evaluation").rglob("*.py")]:
        if "scorers" in path.parts:
            continue
        text = path.read_text()
        named += [f"{path.relative_to(PACKAGE)}: {name}" for name in SCORERS if f'"{name}"' in text or f"'{name}'" in text]
    assert not named, named
