"""distill/memory.py: with glibc's thresholds raised, a tensor freed and allocated again reuses the
process's pages instead of faulting fresh ones in (each run in a fresh interpreter: the setting is
process-wide)."""
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from fewstep.distill.memory import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "on" else False
def step():  # a training step's pattern: many activations of 256 KiB - 2 MiB, all freed at its end
    acts = [torch.ones(2**16 * (1 + i % 8)) for i in range(96)]
    del acts
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    result = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        applied, faults = out.stdout.split()
        result[mode] = (applied == "True", int(faults))
    pages = 5 * sum(2**16 * (1 + i % 8) * 4 for i in range(96)) // 4096  # touched over the 5 steps
    assert result["on"][0] is True
    assert result["on"][1] <= pages // 50, result  # kept: reused
    # glibc's default gives freed memory back and faults it in afresh; how much varies from run to run
    # with its dynamic mmap threshold (measured 20,600 - 134,600 faults of the 138,240 pages touched), so
    # the default is held to a ratio, not a share of the pages
    assert result["off"][1] >= 10 * max(result["on"][1], 1), result
