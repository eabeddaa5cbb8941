"""Process-level allocator settings (glibc malloc thresholds)."""

import os
import platform
import subprocess
import sys

import pytest

from multibox.memory import tune_malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Frees and reallocates multi-megabyte tensors as a training step does; prints the minor page faults it took.
ALLOCATIONS = """
import resource, sys, torch
from multibox.memory import tune_malloc
torch.set_num_threads(1)
applied = tune_malloc() if sys.argv[1] == "tuned" else None
x = torch.randn(2 << 20)  # 8 MB
for _ in range(3):
    ((x * 2) + 1).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    y = x * 2
    z = y + 1
    del y
    w = torch.cat([z, z])  # 16 MB
    del z, w
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", ALLOCATIONS, mode], capture_output=True, text=True, env=env, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_tune_malloc_keeps_freed_memory_for_reuse():
    applied, tuned = faults("tuned")
    _, base = faults("base")
    assert applied == "True"
    # 20 steps over 8-16 MB tensors: 163k page faults here as glibc returns them to the kernel (10k once), 4.1k tuned.
    assert base > 5000 and tuned < 0.6 * base, (tuned, base)


def test_tune_malloc_leaves_user_settings_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert tune_malloc() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert tune_malloc() is False
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert tune_malloc() is False
