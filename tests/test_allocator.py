"""The engine's allocator setting: large blocks come from the heap (not fresh mmap'd pages) once it is on."""

import subprocess
import sys

import pytest

MALLINFO = """
import ctypes, sys
import numpy as np
from stagekit.train import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
"""

PROBE = MALLINFO + """switched = allocator.keep_freed_memory() if sys.argv[1] == "on" else None
before = libc.mallinfo2().hblks
block = np.ones(64 * 2**20 // 8)  # 64 MiB, above glibc's largest mmap threshold
print(switched, libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_come_from_the_heap_once_switched() -> None:
    def mmapped_blocks(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        switched, delta = out.stdout.split()
        return switched, int(delta)

    try:
        assert mmapped_blocks("off") == ("None", 1)  # glibc's default: the block is its own mapping
    except subprocess.CalledProcessError as error:
        pytest.skip(f"not glibc >= 2.33 (no mallinfo2): {error.stderr.strip().splitlines()[-1]}")
    assert mmapped_blocks("on") == ("True", 0)


RETURN_PROBE = MALLINFO + """switched = allocator.return_freed_memory() if sys.argv[1] == "on" else None
del_me = np.ones(16 * 2**20 // 8)  # 16 MiB, mapped; freeing it raises glibc's threshold to 16 MiB by default
del del_me
before = libc.mallinfo2().hblks
block = np.ones(16 * 2**20 // 8)
print(switched, libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_go_back_once_switched() -> None:
    """By default a large block freed raises glibc's mmap threshold and the next one comes from the heap; with
    return_freed_memory it is mapped again (and unmapped when freed)."""
    def mapped(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", RETURN_PROBE, mode], capture_output=True, text=True, check=True)
        switched, delta = out.stdout.split()
        return switched, int(delta)

    try:
        assert mapped("off") == ("None", 0)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"not glibc >= 2.33 (no mallinfo2): {error.stderr.strip().splitlines()[-1]}")
    assert mapped("on") == ("True", 1)
