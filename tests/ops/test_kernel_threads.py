"""The configuration a kernel call hands to C lives as long as the call, whatever other threads do to the cache."""

import ctypes
import subprocess
import sys
import textwrap

import pytest
import torch

import colu
from colu.ops import abi, cpu

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="the CPU kernel is unavailable (no C compiler)")


@pytest.mark.parametrize("backward", [0, 1])
def test_config_outlives_an_eviction_during_the_call(monkeypatch, backward):
    """The kernel reads the struct after ctypes releases the GIL, when another thread may evict it from
    ``cpu.config``'s cache and reuse its memory: emulated here inside the call, deterministically."""
    spec = colu.ConeSpec.resolve(8, 4, None)
    seen = []

    def evicting_run(address):
        cfg_address = (ctypes.c_int64 * abi.ARG_COUNT).from_address(address)[abi.ARG_CFG]
        cpu.config.cache_clear()  # what 256 other configurations from other threads do
        churn = [cpu.config(spec, "hard", 1e3 + i, "identity") for i in range(64)]  # reuse freed memory
        seen.append(cpu._Config.from_address(cfg_address).eps)
        del churn
        return 1

    monkeypatch.setitem(cpu._state, "lib", {"run": evicting_run, "run_half": evicting_run})
    x = torch.randn(3, 8, 1)
    cpu.config.cache_clear()
    if backward:
        cpu.backward(x, torch.ones_like(x), spec, "hard", 0.125, "identity")
    else:
        cpu.forward(x, spec, "hard", 0.125, "identity")
    assert seen == [0.125]


def test_threads_bringing_in_new_configurations_do_not_crash_a_running_call():
    """The reported script, shortened: it crashed (SIGSEGV/SIGABRT) while the cache held the only reference."""
    script = textwrap.dedent(
        """
        import itertools, threading, torch, colu
        torch.set_num_threads(1); ids = itertools.count(); stop = threading.Event()
        big = torch.randn(512, 8192)[:, ::2]  # strided: no cached plan, the checked path
        ref = colu.colu(big, 4)
        def churn():
            small = torch.randn(2, 8)
            while not stop.is_set():
                colu.colu(small, 4, eps=1e-7 * (1 + next(ids)))
        threads = [threading.Thread(target=churn) for _ in range(3)]
        [t.start() for t in threads]
        try:
            for _ in range(40):
                assert torch.equal(colu.colu(big, 4), ref)
        finally:
            stop.set(); [t.join() for t in threads]
        print("survived")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
