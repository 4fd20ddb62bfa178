"""Where a rank's tensors must live: :func:`device`, and :func:`synchronize` for timing.

NCCL moves only GPU tensors: a CPU tensor handed to an NCCL collective fails at once ("No backend
type associated with device type cpu"), and gloo on this course's CPUs moves CPU tensors. So code
that runs on ranks makes every tensor with ``device=dist.device()`` and moves every model with
``.to(dist.device())``; the same cell then runs on gloo (CPU), on NCCL in a local pool with one GPU
per rank, and under torchrun on a cluster::

    def total(x):
        t = torch.tensor([x], device=dist.device())
        tdist.all_reduce(t)
        return t.item()

GPU work is asynchronous: a kernel launch returns before the kernel ran, so reading a clock right
after one measures the launch, not the work. :func:`synchronize` waits for the device (a no-op on
the CPU, where every call has finished when it returns); call it before each clock reading.
"""

from __future__ import annotations

import io
import os
import pickle

import torch
import torch.distributed as tdist


def _backend() -> str | None:
    """The default process group's backend (``'gloo'``, ``'nccl'``, ...), or None without a group."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return None
    return str(tdist.get_backend())


def local_rank() -> int:
    """This rank's index on its machine: ``LOCAL_RANK`` under torchrun; in a local pool (every rank on
    this machine, one GPU each) the rank itself; 0 without a process group."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if not (tdist.is_available() and tdist.is_initialized()):
        return 0
    rank = tdist.get_rank()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return rank % count if count else rank


def device() -> torch.device:
    """The device this rank's tensors must live on.

    ``cuda:<local rank>`` when the process group's backend is NCCL (it also makes that GPU the
    current one, so that ``torch.cuda`` calls without a device, and NCCL itself, use it);
    otherwise the CPU: gloo, or no process group at all (the notebook's own kernel).
    """
    backend = _backend()
    if backend is None or "nccl" not in backend:  # "nccl", or a mixed "cpu:gloo,cuda:nccl"
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"the process group's backend is {backend!r}, which needs a GPU, "
                           "but torch.cuda.is_available() is False on this rank")
    index = local_rank()
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise RuntimeError(f"this rank's local rank is {index} but this machine has {count} GPU(s); "
                           "NCCL needs one GPU per rank on each machine (--nproc-per-node <= GPUs)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def synchronize() -> None:
    """Wait until this rank's device has finished the work queued on it (before reading a clock).

    On a GPU, kernels and NCCL collectives run asynchronously, so time read without this measures
    only their launch; on the CPU every operation has finished when it returns, so this does nothing.
    """
    where = device()
    if where.type == "cuda":
        torch.cuda.synchronize(where)


# --- results travel back on the CPU ---------------------------------------------------------------


def _rebuild_on_cpu(tensor: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    return tensor.requires_grad_(requires_grad)


class _CpuPickler(pickle.Pickler):
    """Pickles GPU tensors as CPU copies: a rank's result is unpickled in the notebook's kernel (or
    on rank 0 under torchrun), which must not open a CUDA context on every rank's GPU, and whose
    reference values are on the CPU."""

    def reducer_override(self, obj):
        # only plain tensors: a Parameter pickles its .data (a plain tensor) through here
        if type(obj) is torch.Tensor and obj.device.type != "cpu":
            return _rebuild_on_cpu, (obj.detach().cpu(), obj.requires_grad)
        return NotImplemented


def dumps_on_cpu(value) -> bytes:
    """``pickle.dumps(value)`` with every GPU tensor inside it copied to the CPU."""
    buffer = io.BytesIO()
    _CpuPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()
