"""The FlashAttention ladder (``course.flash_ladder``): every rung computes attention, and the table
has one row per rung with its compile report and a measured column that says when nothing was measured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import course  # noqa: F401  (first)
from course import bench
from course import flash_attention as fa
from course import flash_ladder as ladder
from course.grading import exercises

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "02_flash_attention.ipynb"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rung", ladder.RUNGS, ids=[f"rung{r.index}" for r in ladder.RUNGS])
def test_every_rung_computes_attention_and_its_gradients(rung, causal):
    # 70 queries and keys: ragged against the 32 x 32 interpreter tiles, so the masked tail runs.
    # fp32 under the interpreter: exp vs exp2 and the order of the online softmax differ from the
    # fp64 reference by a few float32 roundings (~1e-7 relative); 1e-5 leaves 100x room, while a
    # skipped block or a wrong mask is off by O(1e-1).
    q, k, v = fa.make_qkv(3, 70, 32, torch.float32, "cpu", seed=2)
    do = torch.randn_like(q)
    want = fa.naive_attention(q.double(), k.double(), v.double(), causal)
    out = ladder.run_rung(rung, q, k, v, causal=causal, do=do)
    if rung.mode == "fwd":
        assert (out.double() - want).abs().max().item() <= 1e-5
        return
    o, dq, dk, dv = out
    assert (o.double() - want).abs().max().item() <= 1e-5
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    fa.naive_attention(qd, kd, vd, causal).backward(do.double())
    for name, got, ref in (("dq", dq, qd.grad), ("dk", dk, kd.grad), ("dv", dv, vd.grad)):
        # gradients sum 70 products more than the output: 1e-4 (a wrong term is off by O(1e-1))
        assert (got.double() - ref).abs().max().item() <= 1e-4, name


def test_the_ladders_switched_on_kernel_is_the_reference_bit_for_bit():
    q, k, v = fa.make_qkv(2, 70, 32, torch.float32, "cpu", seed=3)
    on = {"USE_EXP2": True, "SKIP_FUTURE_BLOCKS": True, "SPLIT_MASKED": True}
    for causal in (False, True):
        ref = fa.flash_forward(q, k, v, causal=causal)
        got = fa.launch_forward(fa._fwd_ladder_kernel, q, k, v, causal=causal, constexprs=on)
        assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_launch_forward_refuses_constexprs_it_sets_itself():
    q, k, v = fa.make_qkv(1, 8, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="constexprs must map"):
        fa.launch_forward(fa._fwd_ladder_kernel, q, k, v, constexprs={"BLOCK_M": 64})
    with pytest.raises(TypeError, match="rung must be a Rung"):
        ladder.run_rung("rung 3", q, k, v, causal=False)
    with pytest.raises(ValueError, match="give do"):
        ladder.run_rung(ladder.RUNGS[-1], q, k, v, causal=False)


def _function_body(source: str, name: str) -> str:
    """The code lines of ``def name``'s body (after its signature), without comments or exercise markers."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith("):"))
    body = []
    for line in lines[end + 1:]:
        if line and not line.startswith(" "):
            break
        code = line.split("#")[0].strip()
        if code:
            body.append(code)
    return "\n".join(body)


@pytest.mark.parametrize("ours,theirs", [("learner_fwd_kernel", "flash_fwd_kernel"),
                                         ("learner_bwd_kernel", "flash_bwd_kernel")])
def test_the_ladders_learner_kernels_are_notebook_02s_solutions(ours, theirs):
    import inspect

    nb = exercises.read(SOLUTION)
    notebook = "\n".join(exercises.source(c) for c in nb.cells if f"def {theirs}(" in exercises.source(c))
    mine = inspect.getsource(getattr(ladder, ours).fn).replace(f"def {ours}(", f"def {theirs}(")
    assert _function_body(mine, theirs) == _function_body(notebook, theirs)


def test_ladder_table_has_a_row_per_rung_and_says_when_nothing_was_measured(tmp_path):
    for arch in (90, 80):
        rows = ladder.ladder_rows(arch, gpu_csv=tmp_path / "absent.csv")
        assert [r["rung"] for r in rows] == [r.index for r in ladder.RUNGS]
        assert list(rows[0]) == ["rung", "step", "mode", "kernel", "config", f"registers (sm_{arch})", "spills",
                                 "shared", "tensor cores", "TFLOP/s on GPU"]
        assert all(r["TFLOP/s on GPU"] == ladder.NOT_MEASURED for r in rows)
        assert all(r["config"] != "not compiled" for r in rows), rows
        expected = "wgmma" if arch == 90 else "mma"
        assert rows[5]["tensor cores"] == expected  # 128 x 64 tiles reach the arch's tensor-core instruction
    with pytest.raises(ValueError, match="arch must be 80 or 90"):
        ladder.ladder_rows(75)


def test_ladder_table_reads_measured_tflops_with_device_and_date(tmp_path):
    shape = ladder.LADDER_SHAPE
    # synthetic numbers: they test the plumbing, measure nothing
    rows = [{"rung": r.index, "step": r.step, "mode": r.mode, **shape, "ms": 1.0, "tflops": 100.0 + r.index}
            for r in ladder.RUNGS]
    path = bench.save_csv(rows, tmp_path / "gpu.csv", tags={"device": "NVIDIA H100 80GB HBM3", "date": "2026-12-06"})
    table = ladder.ladder_rows(90, gpu_csv=path)
    assert table[3]["TFLOP/s on GPU"] == "103.0 (NVIDIA H100 80GB HBM3, 2026-12-06)"
    assert not any(math.isnan(float(r["TFLOP/s on GPU"].split()[0])) for r in table)
