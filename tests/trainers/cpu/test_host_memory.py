"""The host-memory controls of a CPU training run (Linux with glibc): file-backed tensors' pages go back to the kernel
and come back intact, anonymous memory is never asked for, and fixed malloc thresholds keep large blocks on the heap
for reuse until the run ends."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainers.cpu import host_memory

pytestmark = pytest.mark.skipif(host_memory._libc() is None, reason="Linux with glibc only")


def resident_kb(address: int) -> int:
    """The Rss of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(bound, 16) for bound in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


def test_file_backed_pages_go_back_to_the_kernel_and_come_back_intact(tmp_path: Path) -> None:
    import torch

    values = torch.randn(2**21)  # 8 MiB
    path = tmp_path / "weights.bin"
    with open(path, "wb") as file:
        file.write(values.numpy().tobytes())
        os.fsync(file.fileno())
    mapped = torch.from_file(str(path), shared=False, size=values.numel(), dtype=torch.float32)
    assert torch.equal(mapped, values)  # every page read: resident
    before = resident_kb(mapped.data_ptr())
    assert before >= 8 * 1024 - 8

    asked = host_memory.page_out_file_backed([mapped])
    assert asked >= 8 * 2**20 - 2 * 4096  # whole pages only
    assert resident_kb(mapped.data_ptr()) < before / 4
    assert torch.equal(mapped, values)  # faulted back in from the file


def test_anonymous_memory_and_empty_tensors_are_not_asked_for() -> None:
    import torch

    values = torch.randn(2**20)
    copy = values.clone()
    assert host_memory.page_out_file_backed([values, torch.empty(0)]) == 0
    assert torch.equal(values, copy)


STEADY = textwrap.dedent(
    """
    import ctypes, resource, sys
    from trainers.cpu import host_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = host_memory._libc()
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 16 * 2**20

    def touch_a_block():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)

    with host_memory.steady_heap() as applied:
        mapped = libc.mallinfo2().hblkhd
        block = libc.malloc(size)
        from_heap = libc.mallinfo2().hblkhd == mapped  # not a mapping of its own
        libc.free(block)
        touch_a_block()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        touch_a_block()
        refaults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        kept = libc.mallinfo2().fordblks >= size  # freed, and still the heap's
    print(applied, from_heap, refaults, kept, libc.mallinfo2().fordblks < size)
    """
)


def test_a_steady_heap_serves_and_keeps_large_blocks_and_trims_at_the_end() -> None:
    """Inside `steady_heap` a 16 MiB block comes from the heap (at glibc's start, a mapping of its own), stays there
    once freed, and its pages are reused without a fault; on exit the free memory goes back to the kernel. A
    subprocess: mallopt settings are process-wide."""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", STEADY], cwd=root, capture_output=True, text=True, timeout=60, check=True
    )
    applied, from_heap, refaults, kept, trimmed = done.stdout.split()
    assert (applied, from_heap, kept, trimmed) == ("True", "True", "True", "True")
    assert int(refaults) < 100  # of 4,096 pages
