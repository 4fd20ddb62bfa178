"""Tests of course.parallel: the instruments (MemTracker live bytes, bytes written), the 2 x 2 mesh,
bucketed DDP, mixed-precision states and activation recomputation."""

from __future__ import annotations

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
    assert got["live"] == got["weights"] + got["grads"] + got["master"] + got["m"] + got["v"]
    padded = zero_check.padded_numel(psi, 4)
    assert got["live"] == precision.formula_bytes(padded, 4, stage)  # exact with the padded count


def test_mixed_precision_formula_is_16_bytes_per_parameter_without_partitioning():
    assert precision.formula_bytes(10, 4, 0) == 160
    with pytest.raises(ValueError, match="stage"):
        precision.formula_bytes(10, 4, 4)


def test_recomputation_keeps_less_for_backward_with_equal_gradients():
    plain, checkpointed = recompute.measure(depth=3, width=16, batch=32, repeats=1)
    assert plain["max |grad - grad without recompute|"] <= 1e-6  # same ops, recomputed: identical here
    assert checkpointed["saved for backward B"] < plain["saved for backward B"] / 2
    assert checkpointed["peak B"] < plain["peak B"]
