"""The ``colu`` command line.

The library's own commands are ``bench`` and ``convert-check``. Other
packages add commands through the ``colu.commands`` entry-point group: each
entry point names a mapping of command name -> :class:`Command`. The
experiment suite (``colu_lab``, installed with this package; its extra
dependencies come with ``pip install 'colu[experiments]'``) adds ``run``,
``sweep``, ``report``, ``align``, ``demo``, ``plot`` and its experiments' own
commands that way, so this module never imports it.

A command's function is imported only when it is run, so ``colu bench`` never
pays for matplotlib and ``colu --help`` stays fast. Commands that need more
than torch and numpy name the modules they import and the extra that installs
them, and are refused up front when one is missing, rather than failing
half-way through.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable, Optional

ENTRY_POINT_GROUP = "colu.commands"


@dataclass(frozen=True)
class Command:
    """A subcommand of ``colu``.

    Args:
        target: ``"module:function"``; ``function(argv) -> int`` parses its own
            arguments and returns the exit status.
        summary: one line for ``colu --help``.
        extra: the extra of ``pip install 'colu[EXTRA]'`` that installs ``needs``.
        needs: the import names the command needs beyond torch and numpy.
        needs_for: where some options change what the command imports, a
            function of the options returning ``(extra, needs)``.
    """

    target: str
    summary: str
    extra: Optional[str] = None
    needs: tuple = ()
    needs_for: Optional[Callable] = None

    def requirements(self, options=()) -> tuple:
        """``(extra, needs)`` with the options ``options``."""
        if self.needs_for is not None:
            return self.needs_for(list(options))
        return self.extra, self.needs


LIBRARY_COMMANDS = {
    "bench": Command("colu.tools.bench:main", "time CoLU/RCoLU against ReLU/SiLU/GELU"),
    "convert-check": Command("colu.tools.convert_check:main",
                             "convert a trained ReLU/SiLU model to CoLU and fine-tune the loss back"),
}

_loaded: dict = {}


def commands() -> dict:
    """Every command: the library's, then those of the ``colu.commands`` entry points.

    An entry point that fails to load is reported once, on stderr, and its
    commands are missing; the library's still work.
    """
    if "commands" not in _loaded:
        found = dict(LIBRARY_COMMANDS)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                table = entry.load()
            except Exception as exc:  # a broken plug-in must not take `colu bench` down with it
                print(f"colu: the commands of {entry.value!r} are unavailable ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
                continue
            for name, command in table.items():
                if name in found:
                    raise RuntimeError(f"{entry.value!r} defines command {name!r} again; each name is defined once")
                found[name] = command
        _loaded["commands"] = found
    return _loaded["commands"]


def _version() -> str:
    from .. import __version__

    return __version__


def _usage(table) -> str:
    width = max(map(len, table))
    lines = [
        "usage: colu COMMAND [options]   (colu COMMAND --help for a command's options)",
        "       colu --version",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in table.items()]
    if "run" not in table:
        lines += ["", "The experiment suite's commands (run, sweep, report, align, demo, plot, ...) are not "
                      "installed: pip install 'colu[experiments]'"]
    return "\n".join(lines)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # ValueError: already imported without a spec (e.g. injected into sys.modules), so it is there
        return module in sys.modules


def missing_modules(name: str, rest: list = ()) -> list:
    """The modules command ``name`` (with options ``rest``) imports that are not installed."""
    _, modules = commands()[name].requirements(rest)
    return [m for m in modules if not _installed(m)]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        print(f"colu {_version()}")
        return 0
    table = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(table))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"colu: unknown command {name!r}\n\n{_usage(table)}", file=sys.stderr)
        return 2
    missing = missing_modules(name, rest)
    if missing:
        extra = table[name].requirements(rest)[0]
        print(f"colu {name}: needs {', '.join(missing)} (not installed): pip install 'colu[{extra}]'",
              file=sys.stderr)
        return 2
    module, function = table[name].target.split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
