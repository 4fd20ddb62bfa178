"""Tests of course.dist.device() and synchronize(): where a rank's tensors live.

On gloo (and without a process group) the answer is the CPU. NCCL cannot run here (no GPU), so
the NCCL case is simulated: the process group reports backend 'nccl' and CUDA reports GPUs, and
the test checks the device chosen and that it was made the current CUDA device.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from course import dist
from course.dist import devices


def rank_devices():
    """Run on every rank: the device it chose, and where a tensor made there went through all_reduce."""
    import torch
    import torch.distributed as tdist

    from course import dist

    where = dist.device()
    t = torch.ones(3, device=where) * (tdist.get_rank() + 1)
    tdist.all_reduce(t)
    dist.synchronize()
    return str(where), str(t.device), t.tolist()


def test_device_is_cpu_without_a_process_group():
    assert not tdist.is_initialized()
    assert dist.device() == torch.device("cpu")
    dist.synchronize()  # a no-op on the CPU: must not touch CUDA (there is none here)


def test_device_is_cpu_on_every_gloo_rank():
    out = dist.pool(2).run(rank_devices)
    assert out.backend == "gloo"
    assert [r[0] for r in out.results] == ["cpu", "cpu"]
    assert [r[1] for r in out.results] == ["cpu", "cpu"]
    assert out.results[0][2] == [3.0, 3.0, 3.0]  # 1 + 2 summed on both ranks


class FakeCuda:
    """Stands in for torch.cuda on a machine with ``count`` GPUs; records set_device/synchronize."""

    def __init__(self, monkeypatch, count: int):
        self.current, self.synced = None, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: self.synced.append(d))

    def set_device(self, index):
        self.current = index


def fake_group(monkeypatch, backend: str, rank: int):
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(tdist, "get_rank", lambda group=None: rank)


def test_nccl_under_torchrun_uses_cuda_local_rank_and_makes_it_current(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=8)
    fake_group(monkeypatch, "nccl", rank=13)  # global rank 13 = machine 1, local rank 5
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert dist.device() == torch.device("cuda", 5)
    assert cuda.current == 5
    dist.synchronize()
    assert cuda.synced == [torch.device("cuda", 5)]


def test_nccl_in_a_local_pool_uses_the_rank_s_gpu(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=4)
    fake_group(monkeypatch, "nccl", rank=2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # dist.pool's ranks do not set it
    assert dist.device() == torch.device("cuda", 2)
    assert cuda.current == 2


def test_mixed_backend_string_with_nccl_picks_the_gpu(monkeypatch):
    FakeCuda(monkeypatch, count=2)
    fake_group(monkeypatch, "cpu:gloo,cuda:nccl", rank=1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.device() == torch.device("cuda", 1)


def test_gloo_never_touches_cuda_even_when_gpus_exist(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=4)
    fake_group(monkeypatch, "gloo", rank=1)
    assert dist.device() == torch.device("cpu")
    dist.synchronize()
    assert cuda.current is None and cuda.synced == []


def test_nccl_with_more_local_ranks_than_gpus_names_the_constraint(monkeypatch):
    FakeCuda(monkeypatch, count=2)
    fake_group(monkeypatch, "nccl", rank=3)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(RuntimeError, match=r"local rank is 3 but this machine has 2 GPU"):
        dist.device()


def test_nccl_without_cuda_says_so(monkeypatch):
    fake_group(monkeypatch, "nccl", rank=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a GPU"):
        dist.device()


def test_device_and_synchronize_are_exported():
    assert {"device", "synchronize", "local_rank"} <= set(dist.__all__)
    assert dist.device is devices.device and dist.synchronize is devices.synchronize
