"""Shared by every test: torch runs one thread unless a test is about threads; a quick compiler for tests
that build the CPU kernel.

On a busy 2-core machine two torch threads made the suite several times slower
than one; tests that are about threads set their own count. ``OMP_NUM_THREADS``,
when the environment sets it, wins (and subprocesses inherit the choice).
"""

import os
import pathlib
import stat

import pytest
import torch

if not os.environ.get("OMP_NUM_THREADS"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

QUICK_COMPILER = """\
#!/bin/sh
# the real compiler with optimisation off (appended, so it wins): the kernel builds in ~10 s instead of ~60 s
exec {real} "$@" -O0
"""


def write_quick_compiler(directory: pathlib.Path) -> pathlib.Path:
    """A ``CC`` that builds the CPU kernel without optimisation: for tests about building, caching and loading
    it (what is built, from which sources, through which route), not about its speed."""
    from colu.ops import cpu

    real = cpu.compiler()
    if real is None:
        pytest.skip("no C compiler: the CPU kernel cannot be built")
    path = directory / "quick-cc"
    path.write_text(QUICK_COMPILER.format(real=real))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def quick_compiler(tmp_path) -> pathlib.Path:
    return write_quick_compiler(tmp_path)
