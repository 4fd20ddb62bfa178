"""Tests of course.checks.megatron: helpers, the simulator, and every check on the notebook's
solution (must pass) and on plausible wrong implementations (must fail)."""

from __future__ import annotations

from pathlib import Path

import pytest
import solution_code
import torch

from course.checks import core
from course.checks import megatron as check

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "solutions" / "07_megatron.ipynb"

PRELUDE = """
import math
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn
from course import dist
from course.checks import megatron as check
"""


def define(source: str) -> dict:
    return solution_code.define(source, PRELUDE)


@pytest.fixture(scope="module")
def solution() -> dict:
    return define(solution_code.code_cells(NOTEBOOK, lambda s: "### BEGIN SOLUTION" in s))


passed = solution_code.passed


def with_replaced(solution: dict, name: str, source: str) -> dict:
    """The solution namespace with one definition replaced (later ones see the new one)."""
    namespace = dict(solution)
    exec(compile(source, "<wrong>", "exec"), namespace)
    return namespace


# --- helpers ------------------------------------------------------------------------------------


def test_shards_validate_and_cut_the_right_blocks():
    w = torch.arange(24.0).view(4, 6)
    assert torch.equal(check.column_shard(w, 1, 2), w[2:])
    assert torch.equal(check.row_shard(w, 1, 2), w[:, 3:])
    with pytest.raises(ValueError, match="output features"):
        check.column_shard(w, 0, 3)
    with pytest.raises(ValueError, match="input features"):
        check.row_shard(w, 0, 4)


def test_simulator_times_gpipe_and_detects_deadlocks():
    p, m = 3, 2
    gpipe = [[("F", i) for i in range(m)] + [("B", i) for i in range(m)] for _ in range(p)]
    timeline, makespan = check.simulate(gpipe, p)
    assert makespan == (m + p - 1) * 3.0  # (m + p - 1)(t_f + t_b)
    assert check.in_flight(timeline, p) == [2.0, 2.0, 2.0]
    backwards_first = [[("B", 0), ("F", 0)]] + [[("F", 0), ("B", 0)]] * (p - 1)
    with pytest.raises(ValueError, match="deadlock"):
        check.simulate(backwards_first, p)
    with pytest.raises(ValueError, match="twice"):
        check.simulate([[("F", 0), ("F", 0), ("B", 0)]], 1)


def test_heads_must_divide_over_the_tensor_parallel_ranks():
    assert check.local_heads(4, 2) == 2
    with pytest.raises(ValueError, match="divisible by the tensor-parallel size"):
        check.local_heads(4, 8)  # torchrun --nproc-per-node 8 on 07's 4 heads: not 4 // 8 = 0 heads


def test_stage_of_splits_equally():
    model = check.pipeline_model()
    assert len(check.stage_of(model, 3, 4)) == 4
    with pytest.raises(ValueError, match="equal stages"):
        check.stage_of(model, 0, 3)


def test_paper_table_is_self_consistent():
    for billions, heads, hidden, layers, t, p, gpus, batch, tflops, percent in check.PAPER_TABLE_1:
        assert gpus % (t * p) == 0 and hidden % heads == 0
        assert abs(100 * tflops / 312 - percent) < 1  # % of the A100's 312 TFLOP/s peak
        assert abs(check._params(layers, hidden, check.VOCAB, check.SEQ_LEN) / 1e9 - billions) < 0.06 * max(
            1, billions / 10)


# --- checks -------------------------------------------------------------------------------------


def test_gpt_params_and_flops(solution):
    assert passed(check.gpt_params_and_flops, solution["gpt_params_and_flops"])
    no_embeddings = define("def f(l, h, V, s, B):\n    return 12*l*h*h*(1 + 13/(12*h)), "
                           "96*B*s*l*h*h*(1 + s/(6*h) + V/(16*l*h))\n")
    assert not passed(check.gpt_params_and_flops, no_embeddings["f"])


def test_conjugate_operators(solution):
    f, g = solution["CopyToTensorParallel"], solution["ReduceFromTensorParallel"]
    assert passed(check.conjugate_operators, f, g)
    assert not passed(check.conjugate_operators, g, f)  # swapped
    in_place = define('''
class G(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        tdist.all_reduce(x)   # reduces the caller's tensor in place
        return x.view_as(x)
    @staticmethod
    def backward(ctx, grad):
        return grad
''')
    assert not passed(check.conjugate_operators, f, in_place["G"])
    assert "clone" in core.RESULTS[-1].message


def test_parallel_mlp(solution):
    assert passed(check.parallel_mlp, solution["parallel_mlp"])
    bias_before_g = with_replaced(solution, "parallel_mlp", '''
def parallel_mlp(x, up_weight, up_bias, down_weight, down_bias):
    h = CopyToTensorParallel.apply(x)
    h = torch.relu(h @ up_weight.T + up_bias)
    return ReduceFromTensorParallel.apply(h @ down_weight.T + down_bias)   # bias summed t times
''')
    assert not passed(check.parallel_mlp, bias_before_g["parallel_mlp"])
    assert "once" in core.RESULTS[-1].message


def test_parallel_attention(solution):
    assert passed(check.parallel_attention, solution["parallel_attention"])
    not_causal = with_replaced(solution, "parallel_attention",
                               solution_source("parallel_attention").replace("is_causal=True", "is_causal=False"))
    assert not passed(check.parallel_attention, not_causal["parallel_attention"])


def solution_source(name: str) -> str:
    return solution_code.solution_source(NOTEBOOK, name)


def test_one_f_one_b(solution):
    assert passed(check.one_f_one_b, solution["one_f_one_b"])
    gpipe = define("def f(p, m, stage):\n    return [('F', i) for i in range(m)] + [('B', i) for i in range(m)]\n")
    assert not passed(check.one_f_one_b, gpipe["f"])  # right bubble, but m microbatches in flight
    assert "at most p" in core.RESULTS[-1].message
    one_too_many = define(solution_source("one_f_one_b").replace("p - stage - 1", "p - stage"))
    assert not passed(check.one_f_one_b, one_too_many["one_f_one_b"])


def test_pipeline_1f1b(solution):
    assert passed(check.pipeline_1f1b, solution["pipeline_1f1b"])
    no_mean = with_replaced(solution, "pipeline_1f1b",
                            solution_source("pipeline_1f1b").replace("F.mse_loss(y, targets[i]) / m",
                                                                     "F.mse_loss(y, targets[i])"))
    assert not passed(check.pipeline_1f1b, no_mean["pipeline_1f1b"])
    assert "/ m" in core.RESULTS[-1].message
    gpipe_source = solution_source("pipeline_1f1b").replace(
        "one_f_one_b(world, m, rank)", "[('F', i) for i in range(m)] + [('B', i) for i in range(m)]")
    assert "[('F', i)" in gpipe_source  # all forwards, then all backwards: GPipe's order
    gpipe_order = with_replaced(solution, "pipeline_1f1b", gpipe_source)
    assert not passed(check.pipeline_1f1b, gpipe_order["pipeline_1f1b"])  # right loss and gradients
    assert "GPipe" in core.RESULTS[-1].message and "in flight" in core.RESULTS[-1].message
    # the earlier solution's pattern: one isend per message, blocking recvs, tags to tell them apart;
    # right on gloo, but under NCCL's rule stage r's activation send and stage r+1's gradient send
    # wait for each other's receives
    from test_dist_device import TAGGED_PIPELINE

    tagged = with_replaced(solution, "pipeline_1f1b", TAGGED_PIPELINE)
    assert not passed(check.pipeline_1f1b, tagged["pipeline_1f1b"])
    assert "NCCL" in core.RESULTS[-1].message and "batch_isend_irecv" in core.RESULTS[-1].message
    stub = define("def f(stage, m, microbatches, targets, shape):\n    raise NotImplementedError('Exercise 7.6')\n")
    assert not passed(check.pipeline_1f1b, stub["f"])
    assert core.RESULTS[-1].message.startswith("not implemented")
