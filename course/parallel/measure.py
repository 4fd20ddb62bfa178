"""Instruments that do not know the formulas they are compared with.

**Memory.** :func:`tracked` is PyTorch's ``MemTracker``: a dispatch mode that sees every storage
allocated while it is active and keeps a weak reference to it, so ``live_bytes`` is the bytes of the
storages made in the region that are still alive, and ``peak_bytes`` the most that were alive at once.
On the CPU the counts are exact bytes; on CUDA the tracker rounds each allocation up to the caching
allocator's 512-byte blocks, so small tensors read larger there. :func:`tracked_bytes` says what the
tracker (and the allocator) should count for given tensors on a given device, so a claim such as
"the tracker sees exactly these tensors" holds on both (:func:`allocation_unit` states the rule).

**Bytes on the wire.** Gloo moves data with ``write``/``writev`` on TCP sockets; Linux adds every byte
a process writes through those calls to ``wchar`` in ``/proc/self/io``. The difference of two readings
around a collective is what the rank really wrote: gloo's own algorithm, its small headers included.
Files and pipes written in the region count too, so measure a region that only communicates. NCCL on
GPUs moves bytes by NVLink or RDMA, not through these calls: there ``wchar`` sees none of them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

_IO = Path("/proc/self/io")


def written_bytes() -> int | None:
    """Bytes this process has written through read/write system calls (``wchar``); None where the
    kernel does not report it (macOS, Windows)."""
    try:
        for line in _IO.read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Wire:
    """Bytes written during a ``with wire() as w:`` region: ``w.bytes`` (None if not measurable)."""

    def __init__(self):
        self.bytes: int | None = None


@contextlib.contextmanager
def wire():
    """Measure the bytes this rank writes to its sockets (and any file) inside the region."""
    result, before = Wire(), written_bytes()
    try:
        yield result
    finally:
        after = written_bytes()
        result.bytes = None if before is None or after is None else after - before


def _total(snapshot: dict, device: torch.device) -> int:
    for where, stats in snapshot.items():
        if torch.device(where) == torch.device(device):
            return int(stats["Total"])
    return 0  # nothing was allocated on that device


class Tracked:
    """A running ``MemTracker``: live and peak bytes of the storages allocated inside the region."""

    def __init__(self, tracker, device):
        self.tracker, self.device = tracker, torch.device(device)

    def live_bytes(self, settle_s: float = 0.0) -> int:
        """Bytes of the storages made in the region that are alive now. With ``settle_s`` > 0, first
        wait (at most ``settle_s``) until the count stops falling for 30 ms: a collective's buffers are
        released by the backend's worker thread a moment after ``wait()`` returns, so a reading taken
        at once sometimes still includes the last one."""
        live = _total(self.tracker.get_tracker_snapshot("current"), self.device)
        deadline, steady = time.monotonic() + settle_s, 0
        while steady < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
            now = _total(self.tracker.get_tracker_snapshot("current"), self.device)
            steady = steady + 1 if now == live else 0
            live = now
        return live

    def peak_bytes(self) -> int:
        return _total(self.tracker.get_tracker_snapshot("peak"), self.device)

    def reset_peak(self) -> None:
        """Start a new peak from what is live now."""
        self.tracker.reset_mod_stats()
        snapshot = self.tracker.get_tracker_snapshot("current")
        self.tracker._peak_mem_snap = {d: dict(s) for d, s in snapshot.items()}  # noqa: SLF001
        self.tracker._peak_mem = {d: s["Total"] for d, s in snapshot.items()}  # noqa: SLF001


@contextlib.contextmanager
def tracked(device="cpu"):
    """``with tracked(device) as mem: ...; mem.live_bytes(), mem.peak_bytes()`` for tensors made inside."""
    from torch.distributed._tools.mem_tracker import MemTracker

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # the tracker files storages under cuda:<index>
        device = torch.device("cuda", torch.cuda.current_device())
    tracker = MemTracker()
    with tracker:
        yield Tracked(tracker, device)


# --- what the allocator hands out -----------------------------------------------------------------
# CUDA's caching allocator serves every request in blocks of a multiple of 512 bytes (kMinBlockSize in
# c10/cuda/CUDACachingAllocator.cpp): a 4-byte tensor occupies 512 B, a 513-byte one 1,024 B, an empty
# one nothing. MemTracker counts CUDA storages with the same rounding, and CPU storages (and those of
# other devices) at their exact size. PYTORCH_NO_CUDA_MEMORY_CACHING=1 turns the caching allocator off,
# and MemTracker's rounding with it. (PYTORCH_CUDA_ALLOC_CONF=roundup_power2_divisions:N makes the real
# allocator round further, to power-of-two fractions; MemTracker does not follow it: leave it unset.)
CUDA_BLOCK_BYTES = 512


def allocation_unit(device) -> int:
    """Bytes a storage's size is rounded up to a multiple of on ``device``, as MemTracker and the
    allocator count it: 512 on CUDA (1 with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1``), 1 elsewhere (exact)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    caching = int(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "0")) == 0  # torch's own test of the variable
    return CUDA_BLOCK_BYTES if caching else 1


def allocated_bytes(nbytes: int, device) -> int:
    """Bytes a storage of ``nbytes`` occupies on ``device``: ``nbytes`` rounded up to :func:`allocation_unit`."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a byte count (an int >= 0), got {nbytes!r}")
    unit = allocation_unit(device)
    return math.ceil(nbytes / unit) * unit


def tracked_bytes(*objects, device=None) -> int:
    """Bytes MemTracker counts for the distinct storages behind the tensors in ``objects`` (nested
    lists, tuples, dicts): each storage's bytes rounded up as the allocator of its device rounds them
    (exact on the CPU, multiples of 512 on CUDA). ``device`` counts them as if they lived there, which
    is how the CUDA count is checked on a machine without a GPU."""
    storages = {}
    for t in tensors_in(*objects):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), t.device)] = allocated_bytes(storage.nbytes(), t.device if device is None else device)
    return sum(storages.values())


def tensors_in(*objects):
    """Every tensor in ``objects``, looking inside nested lists, tuples and dicts (in order, repeats kept)."""
    for obj in objects:
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            yield from tensors_in(*obj.values())
        elif isinstance(obj, (list, tuple)):
            yield from tensors_in(*obj)


def storage_bytes(*objects) -> int:
    """Bytes of the distinct storages behind the tensors in ``objects`` (nested lists, tuples, dicts):
    a view shares its base's storage and counts once."""
    storages = {(t.untyped_storage().data_ptr(), t.device): t.untyped_storage().nbytes() for t in tensors_in(*objects)}
    return sum(storages.values())
