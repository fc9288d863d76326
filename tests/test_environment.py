"""The process environment: the memory allocator reuses freed memory."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

_ALLOCATE = """
import ctypes, sys
import numpy as np
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "kept":
    from fmrilm_bids.utils.environment import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2().hblkhd
block = np.empty(64 * 2**20, dtype=np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(),
                    reason="glibc 2.33 or later only")
def test_large_blocks_come_from_the_heap_not_fresh_mappings() -> None:
    """A 64 MiB block is a fresh mapping by default (faulted in and zeroed by the kernel at
    every allocation); after keep_freed_memory it comes from the heap, where freed blocks
    are reused."""
    mapped = {how: int(subprocess.run([sys.executable, "-c", _ALLOCATE, how], check=True,
                                      capture_output=True, text=True).stdout)
              for how in ("default", "kept")}
    assert mapped["default"] >= 64 * 2**20
    assert mapped["kept"] == 0
