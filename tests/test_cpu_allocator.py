"""keep_freed_memory: large blocks stay in the heap after it (so freeing them unmaps nothing), and the opt-out works.

Each case runs in its own interpreter: mallopt is process-wide, and the test process must not depend on it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json
import torch
from robust_student.cpu_allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
before = libc.mallinfo2().hblkhd
block = torch.empty(16 * 2**20)  # 64 MiB: glibc's default serves it with mmap
mapped = libc.mallinfo2().hblkhd - before
del block
print(json.dumps({"applied": applied, "mapped_mib": mapped / 2**20, "free_in_heap_mib": libc.mallinfo2().fordblks / 2**20}))
"""


def glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def probe(setting: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "ROBUST_STUDENT_MALLOC"}
    if setting is not None:
        env["ROBUST_STUDENT_MALLOC"] = setting
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2) to observe the allocator")
def test_large_blocks_come_from_the_heap_and_stay_there() -> None:
    kept = probe(None)
    assert kept["applied"] is True
    assert kept["mapped_mib"] < 1  # not an mmap: freeing it cannot unmap (and later re-fault) its pages
    assert kept["free_in_heap_mib"] >= 64  # freed, but kept for the next allocation


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2) to observe the allocator")
def test_opt_out_keeps_glibc_defaults() -> None:
    default = probe("system")
    assert default["applied"] is False
    assert default["mapped_mib"] >= 64  # glibc's default: the 64 MiB block is an mmap


def test_cli_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from robust_student import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    assert cli.main(["list"]) == 0
    assert calls == [True]  # the command line owns its process, so it applies the setting once, at start-up
