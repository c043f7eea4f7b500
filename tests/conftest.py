"""Shared by every test: torch runs one thread unless a test is about threads.

On a busy 2-core machine two torch threads made the suite several times slower
than one; tests that are about threads set their own count. ``OMP_NUM_THREADS``,
when the environment sets it, wins (and subprocesses inherit the choice).
"""

import os

import torch

if not os.environ.get("OMP_NUM_THREADS"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
