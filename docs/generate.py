"""Regenerate the generated tables of ``docs/*.md`` from the files under ``results/``.

A generated table sits between two comments that name its renderer and its arguments (paths relative to the
repository root), for example::

    <!-- generated: run-summary results/experiments/hemisphere/results.json -->
    | activation | ... |
    <!-- /generated -->

``python docs/generate.py`` rewrites every such block from its files; ``python docs/generate.py --check`` changes
nothing and exits 1, naming the blocks, where a doc disagrees with its files (the test suite runs it). The
renderers are the functions of ``RENDERERS``: ``render(root, *args) -> str`` (Markdown, no trailing newline).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import render_experiments  # noqa: E402
import render_performance  # noqa: E402

RENDERERS = {**render_performance.RENDERERS, **render_experiments.RENDERERS}

BLOCK = re.compile(r"(<!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def render_doc(text: str, root: pathlib.Path = ROOT) -> str:
    """``text`` with every generated block re-rendered."""

    def replace(match):
        name, *args = match.group("spec").split()
        if name not in RENDERERS:
            raise ValueError(f"unknown renderer {name!r} in '<!-- generated: {match.group('spec')} -->'; "
                             f"known: {', '.join(sorted(RENDERERS))}")
        return match.group(1) + RENDERERS[name](root, *args).rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(replace, text)


def stale_docs(root: pathlib.Path = ROOT) -> list:
    """The docs whose generated blocks disagree with their files."""
    return [str(p.relative_to(root)) for p in sorted((root / "docs").glob("*.md"))
            if render_doc(p.read_text(encoding="utf-8"), root) != p.read_text(encoding="utf-8")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_docs()
        for name in stale:
            print(f"{name}: its generated tables differ from results/; run python docs/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path in sorted((ROOT / "docs").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new = render_doc(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
