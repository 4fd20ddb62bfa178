"""Tests of course.parallel: the instruments (MemTracker live bytes, bytes written), the 2 x 2 mesh,
bucketed DDP, mixed-precision states and activation recomputation."""

from __future__ import annotations

import os

import pytest
import torch

from course import dist
from course.checks import zero as zero_check
from course.parallel import measure, mesh, overlap, precision, recompute

WORLD = 4


# --- instruments ----------------------------------------------------------------------------------


def test_tracked_counts_live_and_peak_bytes_of_tensors_made_inside():
    with measure.tracked() as mem:
        kept = torch.zeros(1000)  # 4,000 B
        temporary = kept * 2  # another 4,000 B, then freed
        del temporary
        live, peak = mem.live_bytes(), mem.peak_bytes()
    assert (live, peak) == (4000, 8000)
    assert kept.numel() == 1000


def test_storage_bytes_counts_a_view_once():
    base = torch.zeros(100)
    assert measure.storage_bytes([base, base[:10], {"again": base}]) == 400


# --- what the tracker counts on each device (CPU exact, CUDA 512-byte blocks) ---------------------


@pytest.fixture
def tracker_rounds_as_on_cuda(monkeypatch):
    """MemTracker counting CPU storages with its own CUDA rule: torch's code, with the device type it
    tests swapped to "cuda" for the call. How the CUDA count is checked without a GPU."""
    from torch.distributed._tools import mem_tracker

    original = mem_tracker._WeakRefInfo._calculate_mem_consumed

    def as_on_cuda(info):
        real, info.device = info.device, torch.device("cuda")
        try:
            return original(info)
        finally:
            info.device = real

    monkeypatch.setattr(mem_tracker._WeakRefInfo, "_calculate_mem_consumed", as_on_cuda)


def test_allocation_unit_is_exact_on_the_cpu_and_512_bytes_on_cuda(monkeypatch):
    monkeypatch.delenv("PYTORCH_NO_CUDA_MEMORY_CACHING", raising=False)
    assert [measure.allocation_unit(d) for d in ("cpu", "meta", "cuda", "cuda:1")] == [1, 1, 512, 512]
    monkeypatch.setenv("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")  # no caching allocator: no rounding
    assert measure.allocation_unit("cuda") == 1


def test_the_cuda_block_is_the_one_memtracker_uses():
    from torch.distributed._tools import mem_tracker

    if int(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "0")):
        pytest.skip("PYTORCH_NO_CUDA_MEMORY_CACHING is set: MemTracker does not round in this process")
    assert mem_tracker._PYTORCH_MIN_ALLOCATE == measure.CUDA_BLOCK_BYTES


@pytest.mark.parametrize("nbytes, cpu, cuda", [(0, 0, 0), (1, 1, 512), (4, 4, 512), (511, 511, 512),
                                               (512, 512, 512), (513, 513, 1024), (27_696, 27_696, 27_648 + 512)])
def test_allocated_bytes_rounds_up_to_the_devices_unit(nbytes, cpu, cuda, monkeypatch):
    monkeypatch.delenv("PYTORCH_NO_CUDA_MEMORY_CACHING", raising=False)
    assert (measure.allocated_bytes(nbytes, "cpu"), measure.allocated_bytes(nbytes, "cuda")) == (cpu, cuda)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_allocated_bytes_refuses_what_is_not_a_byte_count(bad):
    with pytest.raises(ValueError, match="byte count"):
        measure.allocated_bytes(bad, "cpu")


def test_tracked_bytes_on_the_cpu_are_the_storages_exact_bytes():
    base = torch.zeros(100)
    tensors = [base, base[:10], {"again": base}, torch.zeros(3, dtype=torch.bfloat16)]
    assert measure.tracked_bytes(tensors) == measure.storage_bytes(tensors) == 406  # a view counts once


def test_tracked_bytes_agree_with_memtracker_under_simulated_cuda_rounding(tracker_rounds_as_on_cuda, monkeypatch):
    monkeypatch.delenv("PYTORCH_NO_CUDA_MEMORY_CACHING", raising=False)
    with measure.tracked() as mem:
        # sizes below, at and above one 512-byte block, a view, an odd bf16 tensor, an empty one
        kept = [torch.zeros(1), torch.zeros(127), torch.zeros(128), torch.zeros(129), torch.zeros(1000),
                torch.zeros(5, dtype=torch.bfloat16), torch.zeros(0)]
        kept.append(kept[4][:10])
        live = mem.live_bytes()
    exact = measure.storage_bytes(kept)
    assert exact == 4 + 508 + 512 + 516 + 4000 + 10
    assert live == measure.tracked_bytes(kept, device="cuda") == 512 + 512 + 512 + 1024 + 4096 + 512
    assert live != exact  # why a claim "tracker = the tensors' nbytes" would print False on a GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (checked by simulation above)")
def test_tracked_bytes_agree_with_memtracker_and_the_allocator_on_cuda():
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with measure.tracked("cuda") as mem:
        kept = [torch.zeros(n, device="cuda") for n in (1, 127, 128, 129, 1000)]
        kept.append(torch.zeros(5, dtype=torch.bfloat16, device="cuda"))
        live = mem.live_bytes()
    expected = measure.tracked_bytes(kept)
    assert expected == 512 + 512 + 512 + 1024 + 4096 + 512
    assert live == expected  # MemTracker's count
    assert torch.cuda.memory_allocated() - before == expected  # the caching allocator's own


def test_wire_sees_bytes_written_by_the_process(tmp_path):
    if measure.written_bytes() is None:
        pytest.skip("this system does not report wchar in /proc/self/io")
    with measure.wire() as wire:
        (tmp_path / "f").write_bytes(b"x" * 10_000)
    assert 10_000 <= wire.bytes < 11_000  # the write itself, plus nothing else large in the region


def test_gloo_reduce_scatter_writes_twice_the_ring_model():
    if measure.written_bytes() is None:
        pytest.skip("this system does not report wchar in /proc/self/io")

    def probe(numel):
        import torch.distributed as tdist
        out = torch.empty(numel // tdist.get_world_size())
        tdist.reduce_scatter_tensor(out, torch.ones(numel))  # warm-up: the first call also sets up connections
        with dist.measure() as counted, measure.wire() as wire:
            tdist.reduce_scatter_tensor(out, torch.ones(numel))
        return counted.sent(), wire.bytes

    for counted, written in dist.pool(WORLD).run(probe, 1 << 16).results:
        assert abs(written / counted - 2) < 0.03  # 3% band: gloo's headers, about 2 KB on 192 KiB counted


# --- the mesh -------------------------------------------------------------------------------------


def test_tensor_x_data_parallel_on_a_2x2_mesh_equals_one_process():
    out = dist.pool(WORLD).run(mesh.train_tp_dp, 3)
    reference = mesh.train_one_process(3)
    for whole, sent in out.results:
        assert mesh.max_difference(whole, reference) <= 1e-5  # float32, sums split over ranks: ~3e-8 seen
        assert sent == mesh.ring_model_bytes(3, 2, 2)


def test_a_1x2_mesh_counts_the_tp_bytes_of_a_dimension_that_spans_every_rank():
    # on 2 ranks (torchrun --nproc-per-node 2) tp is the default group: once counted under "world", 0 B on "tp"
    out = dist.pool(2).run(mesh.train_tp_dp, 3)
    reference = mesh.train_one_process(3)
    for whole, sent in out.results:
        assert mesh.max_difference(whole, reference) <= 1e-5
        assert sent == mesh.ring_model_bytes(3, 1, 2) and sent["tp"] > 0 and sent["dp"] == 0


def test_mesh_refuses_a_tp_size_that_does_not_divide_the_ranks():
    def bad():
        return mesh.train_tp_dp(1, tp=3)

    with pytest.raises(dist.RankFailed, match="tp=3 must divide"):
        dist.pool(WORLD).run(bad)


# --- bucketed DDP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes, cap, want", [([4, 4, 4, 4], 8, [[0, 1], [2, 3]]), ([10, 1, 1], 8, [[0], [1, 2]]),
                                              ([], 8, []), ([1, 1], 100, [[0, 1]])])
def test_assign_buckets_closes_a_bucket_when_it_reaches_the_cap(sizes, cap, want):
    assert overlap.assign_buckets(sizes, cap) == want


@pytest.mark.parametrize("cap", [0, -1, 1.5, True])
def test_assign_buckets_refuses_a_bad_cap(cap):
    with pytest.raises(ValueError, match="bucket_bytes"):
        overlap.assign_buckets([1, 2], cap)


def test_bucketed_ddp_equals_plain_ddp_and_launches_every_bucket_during_backward():
    out = dist.pool(WORLD).run(overlap.compare, 1 << 14, 4, 64, 16, 2)  # 16 KiB: one 64 x 64 weight a bucket
    for result in out.results:
        assert result["max |bucketed - plain|"] <= 1e-6  # same four values summed per element
        for timing in result["timings"]:
            assert timing["launches before backward end"] == timing["buckets"] == 4


def _fake_compare(waits, plains, done=0):
    return {"timings": [{"wait after backward s": w, "complete at backward end": done} for w in waits],
            "plain all-reduce s": list(plains)}


def test_exposed_communication_leaves_out_the_warm_up_and_pairs_each_repeat():
    results = [_fake_compare([9.0, 0.001, 0.003], [9.0, 0.002, 0.004]),
               _fake_compare([9.0, 0.002, 0.002], [9.0, 0.004, 0.001], done=1)]
    got = overlap.exposed_communication(results, warmup=1)
    assert got["repeats"] == 2
    assert got["bucketed ms"] == [[1.0, 3.0], [2.0, 2.0]]
    assert got["plain ms"] == [[2.0, 4.0], [4.0, 1.0]]
    assert got["ratios"] == [0.5, 0.75, 0.5, 2.0]
    assert got["done at backward end"] == [[0, 0], [1, 1]]


@pytest.mark.parametrize("results, warmup, match", [
    ([], 1, "one compare"), ([_fake_compare([1.0], [1.0])], 1, "more than warmup=1"),
    ([_fake_compare([1.0, 1.0], [1.0, 1.0]), _fake_compare([1.0] * 3, [1.0] * 3)], 1, "same number of steps"),
    ([_fake_compare([1.0, 1.0], [1.0, 1.0])], -1, "warmup")])
def test_exposed_communication_refuses_what_it_cannot_summarise(results, warmup, match):
    with pytest.raises(ValueError, match=match):
        overlap.exposed_communication(results, warmup=warmup)


def test_bucketed_ddp_refuses_buckets_that_lose_a_parameter():
    def lossy(sizes, cap):
        return [[i] for i in range(len(sizes) - 1)]

    def run():
        return overlap.BucketedDDP(overlap.deep_mlp(2, 8), 64, assign=lossy)

    with pytest.raises(dist.RankFailed, match="exactly one bucket"):
        dist.pool(WORLD).run(run)


# --- mixed precision and recomputation ------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_mixed_precision_states_measured_match_2_2_12_bytes_per_parameter(stage):
    got = precision.measured_bytes(zero_check.tiny_mlp, lambda: zero_check.batch(0), 4, 1, stage)
    psi = sum(p.numel() for p in zero_check.tiny_mlp().parameters())
    assert got["live"] == got["weights"] + got["grads"] + got["master"] + got["m"] + got["v"] == got["allocated"]
    padded = zero_check.padded_numel(psi, 4)
    assert got["live"] == precision.formula_bytes(padded, 4, stage)  # exact with the padded count


@pytest.mark.parametrize("stage", [0, 3])
def test_mixed_precision_live_bytes_are_the_allocated_states_under_simulated_cuda_rounding(
        stage, tracker_rounds_as_on_cuda, monkeypatch):
    # both the tracker and the helper count the CPU tensors as CUDA would: the notebook's claim
    # "live = the kept tensors as allocated" holds there, while "live = their nbytes" would not
    monkeypatch.setattr(measure, "allocation_unit", lambda device: measure.CUDA_BLOCK_BYTES)
    got = precision.measured_bytes(zero_check.tiny_mlp, lambda: zero_check.batch(0), 4, 1, stage, device="cpu")
    exact = got["weights"] + got["grads"] + got["master"] + got["m"] + got["v"]
    assert got["live"] == got["allocated"] > exact
    assert got["allocated"] - exact < 5 * measure.CUDA_BLOCK_BYTES  # at most 511 B more for each of the 5 tensors


def test_mixed_precision_formula_is_16_bytes_per_parameter_without_partitioning():
    assert precision.formula_bytes(10, 4, 0) == 160
    with pytest.raises(ValueError, match="stage"):
        precision.formula_bytes(10, 4, 4)


def test_recomputation_keeps_less_for_backward_with_equal_gradients():
    plain, checkpointed = recompute.measure(depth=3, width=16, batch=32, repeats=1)
    assert plain["max |grad - grad without recompute|"] <= 1e-6  # same ops, recomputed: identical here
    assert checkpointed["saved for backward B"] < plain["saved for backward B"] / 2
    assert checkpointed["peak B"] < plain["peak B"]
