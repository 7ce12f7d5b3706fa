"""The documentation: a short README that keeps its promises, links that resolve, and a site that builds
strictly offline with a CLI reference generated from the parser (so it cannot drift from the code)."""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 170

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), REPO / "experiments" / "real32" / "README.md"]


def relative_links(path: Path) -> list[str]:
    """Targets of the inline links and images of a Markdown file, outside code, that are not URLs or
    same-page anchors."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_short_and_keeps_its_promises():
    text = README.read_text()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the limit is {README_MAX_LINES}: move detail into docs/"
    assert "make test" in text, "README shows the command CI runs (.ci/run calls `make test`)"
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "<!-- api-example -->" in text, "README keeps the API example after its marker (tests/test_detection.py runs it)"
    assert "../shared" not in text and not any("shared/" in t for t in relative_links(README)), "README links into ../shared, which users' clones do not have"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link these docs pages: {missing}"


def test_relative_links_point_to_existing_files():
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            file_part = target.split("#", 1)[0]
            if file_part and not (path.parent / file_part).exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('[a](missing.md) `[b](in_code.md)` [c](https://example.org) [d](#here) ![e](img/x.png "t")\n```\n[f](fenced.md)\n```\n')
    assert relative_links(page) == ["missing.md", "img/x.png"]


def _help_texts() -> dict[str, str]:
    """`zsad --help` and every subcommand's help, as the parser prints them at 100 columns."""
    from zsad.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        texts = {"zsad": parser.format_help()}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                texts.update({f"zsad {name}": sub.format_help() for name, sub in action.choices.items()})
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return texts


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_site_builds_strictly_and_the_cli_reference_is_complete(tmp_path):
    """`mkdocs build --strict` (broken links and anchors fail it), offline, into a temporary folder; the
    built CLI page holds the help of every subcommand the parser has."""
    assert "site_dir: outputs/site" in (REPO / "mkdocs.yml").read_text(), "the site is built into outputs/ (never a tracked folder)"
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    page = site / "cli" / "index.html"
    assert page.is_file(), sorted(p.name for p in site.iterdir())
    text = _squash(html.unescape(re.sub(r"<[^>]+>", "", page.read_text())))
    texts = _help_texts()
    assert len(texts) > 5, texts.keys()
    missing = [command for command, help_text in texts.items() if _squash(help_text) not in text]
    assert not missing, f"the built CLI reference lacks the current --help of: {missing} (docs/hooks.py)"
    assert not list(site.rglob("hooks.py")), "the hook is not published as a page asset"


def test_the_lite_decision_is_stated_with_the_cost_it_rests_on():
    """No `lite` preset ships (docs/speed.md says why); the default it was measured against costs what the page says."""
    import zsad
    from zsad.scoring.scorers import RECOMMENDED_SCORER

    speed = (REPO / "docs" / "speed.md").read_text()
    assert "No `lite` preset ships because" in speed
    default = zsad.build_scorer(RECOMMENDED_SCORER)
    assert default.network_evaluations_per_image(1000) == 20 and "`diffpath_fused` at 10 steps (20 network evaluations per image)" in speed
    assert zsad.build_scorer(RECOMMENDED_SCORER, steps=3).network_evaluations_per_image(1000) == 6, "the closest candidate's cost"


ZSAD_MODEL_SECTION = "## A zsad model in anomalib's Engine"


def _sections(path: Path, heading: str, keep: bool) -> str:
    """The page's `heading` section (keep) or everything else (not keep); a section runs to the next `## ` heading."""
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    end = len(text) if end < 0 else end + 1
    return text[start:end] if keep else text[:start] + text[end:]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_zsad_model_example_runs(tmp_path, monkeypatch, smoke_checkpoint):
    """docs/anomalib.md's "A zsad model in anomalib's Engine" block, as written: Engine fit and test of Zsad on an offline Folder
    datamodule, "zsad-demo" being the 16 px smoke backbone copied where `zsad demo` puts it, then predict from the checkpoint."""
    import shutil

    import pytest

    pytest.importorskip("anomalib")
    (block,) = _python_blocks(_sections(DOCS / "anomalib.md", ZSAD_MODEL_SECTION, keep=True))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs/demo/train/checkpoints").mkdir(parents=True)
    shutil.copy(smoke_checkpoint, tmp_path / "outputs/demo/train/checkpoints/last.ckpt")
    namespace: dict = {}
    exec(compile(block, "docs/anomalib.md (Zsad example)", "exec"), namespace)
    assert {"image_AUROC", "pixel_AUROC"} <= set(namespace["metrics"][0])
    assert sum(len(b.image_path) for b in namespace["predictions"]) == 14 and namespace["model"].detector.info["n_fit"] == 32


def test_the_anomalib_page_examples_run(tmp_path, monkeypatch):
    """docs/anomalib.md's Python blocks, in order, as written: Engine + Folder + Padim(pre_trained=False) with the conformal
    post-processor on an offline MVTec-layout folder, then the checkpoint reloaded with the same decisions."""
    import pytest

    pytest.importorskip("anomalib")
    blocks = _python_blocks(_sections(DOCS / "anomalib.md", ZSAD_MODEL_SECTION, keep=False))
    assert len(blocks) == 2, "the page's two examples: the post-processor, the checkpoint"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/anomalib.md (example {i + 1})", "exec"), namespace)
    post = namespace["model"].post_processor
    assert len(post.calibration_scores) == 30 and post.excluded_anomalous == 6, "the page's card numbers are for 30 calibration images"
    assert "Beta(1, 30): mean 3.23%, 90% of calibration sets give between 0.17% and 9.50%" in post.card(), post.card()
    assert sum(len(b.image_path) for b in namespace["again"]) == 36
