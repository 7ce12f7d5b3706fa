"""mkdocs hook: the CLI reference is generated from the argparse help, so it cannot drift from the code.

In `cli.md` the marker `<!-- cli-reference -->` becomes the `--help` text of `zsad` and of every subcommand
of `zsad.cli.build_parser()`, each under its own heading in a fenced block, wrapped at 100 columns.
tests/test_docs.py checks that the built page holds the help of every subcommand."""

from __future__ import annotations

import argparse
import os

from mkdocs.exceptions import PluginError

MARKER = "<!-- cli-reference -->"
COLUMNS = "100"  # argparse wraps at $COLUMNS: fixed, so the page does not depend on the terminal that built it


def cli_help() -> list[tuple[str, str]]:
    """(command line, help text) for `zsad` and each of its subcommands, in the parser's order."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        from zsad.cli import build_parser  # lazily: only the page that needs it pays for the import

        parser = build_parser()
        sections = [("zsad", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                sections += [(f"zsad {name}", sub.format_help()) for name, sub in action.choices.items()]
        return sections
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def render() -> str:
    """The reference as Markdown: a heading and a fenced block per command."""
    parts = []
    for command, text in cli_help():
        parts.append(f"## `{command}`\n\n````text\n{text.rstrip()}\n````\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "cli.md":
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/cli.md lost its {MARKER} marker: the CLI reference would be missing.")
    return markdown.replace(MARKER, render())
