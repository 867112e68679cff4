"""How a CPU training run uses the host's memory, on Linux with glibc (elsewhere both helpers do nothing):

- `steady_heap`: glibc's malloc starts with dynamic thresholds: a block over the mmap threshold (128 KiB, rising to
  the largest block freed so far, at most 32 MiB) gets pages of its own, and free memory at the top of the heap
  beyond twice that is handed back to the kernel. A training step frees and reallocates the same large tensors many
  times, so those pages are returned and faulted back in over and over. Fixed thresholds (heap for blocks up to
  32 MiB, no trimming while the run lasts) stop that: measured faster at the same peak (benchmarks/README.md).
- `page_out_file_backed`: hands the pages of tensors that a run will not read back to the kernel
  (madvise MADV_PAGEOUT), where they are pages of a file mapping (transformers maps a checkpoint loaded in its own
  dtype). The kernel drops clean pages and reads them back from the file when something touches them again; it never
  discards a modified page (one copied on write is anonymous: swapped out where there is swap, else kept). Anonymous
  memory is not asked for: with swap, that would be swapping the run's own data out."""

import contextlib
import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, malloc.h
HEAP_BLOCKS_UP_TO = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
KEEP_FREE_UP_TO = 2**31 - 1  # the largest trim threshold mallopt takes (an int): in effect, no trimming
MADV_PAGEOUT = 21  # Linux 5.4+


@cache
def _libc() -> Any:
    """glibc through ctypes, or None (another OS or C library: nothing to tune)."""
    if not sys.platform.startswith("linux"):
        return None
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


@contextlib.contextmanager
def steady_heap() -> Iterator[bool]:
    """For a run: malloc serves blocks up to 32 MiB from its heap and keeps freed memory for reuse instead of
    returning it to the kernel; at the end, `malloc_trim` returns what is free. Yields whether it applied.

    mallopt settings are process-wide and glibc cannot go back to its dynamic thresholds, so the fixed ones stay for
    the rest of the process (a training worker's next run wants them too); only the trimming at the end is scoped."""
    libc = _libc()
    if libc is None:
        yield False
        return
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO))
    applied = bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREE_UP_TO)) and applied
    try:
        yield applied
    finally:
        libc.malloc_trim(0)


def page_out_file_backed(tensors: Iterable[Any]) -> int:
    """Ask the kernel to reclaim the whole pages of each CPU tensor's data that lie in a file mapping (the process's
    /proc/self/maps). Returns the bytes it asked for (0 where nothing is file-backed, or off Linux/glibc, or on a
    kernel without MADV_PAGEOUT)."""
    libc = _libc()
    if libc is None:
        return 0
    mappings = _file_mappings()
    page = mmap.PAGESIZE
    asked = 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        for low, high in mappings:
            first, last = max(start, low), min(end, high)
            first, last = -(-first // page) * page, last // page * page  # whole pages only: neighbours stay
            if last <= first:
                continue
            if libc.madvise(first, last - first, MADV_PAGEOUT) != 0:
                return asked  # a kernel older than 5.4 (EINVAL): nothing further will take it
            asked += last - first
    return asked


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from regular files (not the heap, stacks, anonymous or special mappings,
    devices or memfd, whose pages are anonymous memory by another name)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            path = fields[5] if len(fields) == 6 else ""
            if not path.startswith("/") or path.startswith(("/dev/", "/memfd:", "/SYSV")):
                continue
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            ranges.append((low, high))
    return ranges
