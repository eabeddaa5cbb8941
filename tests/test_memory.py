"""Process-level allocator settings (glibc malloc thresholds)."""

import os
import platform
import subprocess
import sys

import pytest

from multibox.memory import tune_malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Frees and reallocates multi-megabyte tensors as a training step does; prints the minor page faults that 20 steps
# took once two warm-up steps have run. "eager" is the control: a fixed 128 KiB mmap threshold (glibc's start value,
# without its dynamic raise) serves every block with mmap and returns it on free, so each step faults its 32 MB in
# again. glibc's own default sits between the two and depends on the heap's layout.
ALLOCATIONS = """
import ctypes, resource, sys, torch
from multibox.memory import _M_MMAP_THRESHOLD, tune_malloc
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    applied = tune_malloc()
else:
    applied = ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 << 10) == 1
x = torch.randn(2 << 20)  # 8 MB


def step():
    y = x * 2
    z = y + 1
    del y
    w = torch.cat([z, z])  # 16 MB
    del z, w


for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
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
    eager_applied, eager = faults("eager")
    assert applied == "True" and eager_applied == "True"
    # 20 steps x 32 MB of fresh pages = 163,840 faults of 4 KiB when memory goes back to the kernel. Tuned, the 20
    # steps fault in less than the control's one step (a heap that grows once may still fault that growth in).
    assert eager > 100_000, eager
    assert tuned < eager / 20, (tuned, eager)


def test_tune_malloc_leaves_user_settings_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert tune_malloc() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert tune_malloc() is False
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert tune_malloc() is False
