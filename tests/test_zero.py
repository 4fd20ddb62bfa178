"""Tests of course.checks.zero: the shared helpers, and every check on the notebook's solution
(must pass) and on plausible wrong implementations (must fail).

The solutions are read from solutions/06_zero.ipynb and defined as a notebook would define them
(module ``__main__``), so they travel to the ranks by value exactly as in the notebook.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import solution_code
import torch

from course.checks import core
from course.checks import zero as check

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "solutions" / "06_zero.ipynb"

PRELUDE = """
import math, time
import torch
import torch.distributed as tdist
from torch import nn
from course import dist
from course.checks import zero as check
"""


def define(source: str) -> dict:
    return solution_code.define(source, PRELUDE)


@pytest.fixture(scope="module")
def solution() -> dict:
    return define(solution_code.code_cells(NOTEBOOK, lambda s: "### BEGIN SOLUTION" in s))


passed = solution_code.passed


# --- helpers -------------------------------------------------------------------------------------


def test_adam_update_matches_torch_adam():
    torch.manual_seed(0)
    p = torch.randn(50)
    state = check.new_adam_state(p)
    q = p.clone().requires_grad_()
    opt = torch.optim.Adam([q], lr=check.LR, betas=check.BETAS, eps=check.EPS)
    for _ in range(5):
        g = torch.randn(50)
        check.adam_update(state, g)
        q.grad = g.clone()
        opt.step()
    # 1e-7: the same float32 formula, evaluated in a slightly different order
    torch.testing.assert_close(state["master"], q.detach(), atol=1e-7, rtol=1e-6)
    assert check.tensor_bytes(state) == 12 * 50


def test_adam_update_rejects_a_gradient_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        check.adam_update(check.new_adam_state(torch.zeros(4)), torch.zeros(5))


def test_flatten_padded_pads_to_a_multiple_of_the_world_size():
    flat = check.flatten_padded([torch.ones(2, 2), torch.ones(3)], 4)
    assert flat.tolist() == [1.0] * 7 + [0.0]
    assert check.padded_numel(6922, 4) == 6924 and check.padded_numel(8, 4) == 8


def test_write_flat_ignores_the_padding():
    params = [torch.zeros(2, 2), torch.zeros(3)]
    check.write_flat(params, torch.arange(8.0))
    assert params[0].tolist() == [[0, 1], [2, 3]] and params[1].tolist() == [4, 5, 6]


def test_tensor_bytes_counts_each_tensor_once():
    t = torch.zeros(10)
    assert check.tensor_bytes([t, t], {"a": t, "b": [torch.zeros(2, dtype=torch.float16)]}, None) == 44


def test_batch_slices_the_global_batch_and_validates_the_world_size():
    x, y = check.batch(3)
    x1, y1 = check.batch(3, 1, 4)
    assert torch.equal(x1, x[8:16]) and torch.equal(y1, y[8:16])
    with pytest.raises(ValueError, match="world_size"):
        check.batch(0, 0, 5)


@pytest.mark.parametrize("world", [2, 4, 8, 32])
def test_data_parallel_ranks_accepts_two_or_more_ranks_that_split_the_batch(world):
    assert check.data_parallel_ranks(world) == world


def test_data_parallel_ranks_names_the_two_rank_minimum_for_one_rank():
    with pytest.raises(ValueError, match=r"notebook 06 needs at least 2 ranks; got 1: .*--nproc-per-node 2"):
        check.data_parallel_ranks(1)
    with pytest.raises(ValueError, match="at least 2 ranks; got 0"):
        check.data_parallel_ranks(0)
    with pytest.raises(ValueError, match=r"notebook 08 needs at least 2 ranks; got 1"):  # 08 trains the same model
        check.data_parallel_ranks(1, notebook="08")


@pytest.mark.parametrize("world, match", [(3, r"divides its global batch of 32 rows.*\[2, 4, 8, 16, 32\]; got 3"),
                                          (True, "whole number of ranks; got True"), (2.0, "whole number")])
def test_data_parallel_ranks_refuses_what_the_notebook_cannot_run_on(world, match):
    with pytest.raises(ValueError, match=match):
        check.data_parallel_ranks(world)


def test_model_has_the_documented_size():
    assert sum(p.numel() for p in check.tiny_mlp().parameters()) == 6922


# --- 6.1 memory formulas -------------------------------------------------------------------------


def test_zero_memory_passes_on_the_solution(solution):
    assert passed(check.zero_memory, solution["zero_memory"])


@pytest.mark.parametrize("wrong", [
    # stage 2 forgot to shard the gradients
    "def f(psi, n, stage, k=12, param_bytes=2, grad_bytes=2):\n"
    "    p, g, o = param_bytes*psi, grad_bytes*psi, k*psi\n"
    "    return [p+g+o, p+g+o/n, p+g+o/n, (p+g+o)/n][stage]\n",
    # ignores k, param_bytes and grad_bytes
    "def f(psi, n, stage, k=12, param_bytes=2, grad_bytes=2):\n"
    "    return [16*psi, 4*psi+12*psi/n, 2*psi+14*psi/n, 16*psi/n][stage]\n",
    # never raises for a bad stage
    "def f(psi, n, stage, k=12, param_bytes=2, grad_bytes=2):\n"
    "    p, g, o = param_bytes*psi, grad_bytes*psi, k*psi\n"
    "    return [p+g+o, p+g+o/n, p+(g+o)/n, (p+g+o)/n][min(stage, 3)]\n",
])
def test_zero_memory_fails_on_wrong_formulas(wrong):
    assert not passed(check.zero_memory, define(wrong)["f"])


# --- checks that run on the ranks ------------------------------------------------------------------

STUB = "def f(*args, **kwargs):\n    raise NotImplementedError('Exercise 6.x')\n"


def test_allreduce_gradients(solution):
    assert passed(check.allreduce_gradients, solution["allreduce_gradients"])
    assert not passed(check.allreduce_gradients, define(STUB)["f"])
    summed = define("def f(model):\n    for p in model.parameters():\n        tdist.all_reduce(p.grad)\n")
    assert not passed(check.allreduce_gradients, summed["f"])
    assert "mean, not the sum" in core.RESULTS[-1].message


def test_zero1_step(solution):
    assert passed(check.zero1_step, solution["zero1_step"])
    # all-reduce instead of reduce-scatter: right numbers, but 3 Psi instead of 2 Psi of traffic
    wasteful = define('''
def f(model, state, lr):
    rank, world = tdist.get_rank(), tdist.get_world_size()
    params = list(model.parameters())
    grad = check.flatten_padded([p.grad for p in params], world)
    tdist.all_reduce(grad)
    grad /= world
    check.adam_update(state, grad.chunk(world)[rank].clone(), lr)
    flat = torch.empty(grad.numel())
    tdist.all_gather_into_tensor(flat, state["master"])
    check.write_flat(params, flat)
''')
    assert not passed(check.zero1_step, wasteful["f"])
    # forgets to gather: each rank only ever updates its own slice
    no_gather = define('''
def f(model, state, lr):
    rank, world = tdist.get_rank(), tdist.get_world_size()
    params = list(model.parameters())
    grad = check.flatten_padded([p.grad for p in params], world)
    shard = torch.empty(grad.numel() // world)
    tdist.reduce_scatter_tensor(shard, grad)
    check.adam_update(state, shard / world, lr)
''')
    assert not passed(check.zero1_step, no_gather["f"])


def test_shard_gradients(solution):
    assert passed(check.shard_gradients, solution["shard_gradients"])
    keeps_grads = define('''
def f(params):
    world = tdist.get_world_size()
    flat = check.flatten_padded([p.grad for p in params], world)
    chunk = torch.empty(flat.numel() // world)
    tdist.reduce_scatter_tensor(chunk, flat)
    return chunk / world
''')
    assert not passed(check.shard_gradients, keeps_grads["f"])
    assert "None" in core.RESULTS[-1].message
    no_mean = define('''
def f(params):
    world = tdist.get_world_size()
    flat = check.flatten_padded([p.grad for p in params], world)
    chunk = torch.empty(flat.numel() // world)
    tdist.reduce_scatter_tensor(chunk, flat)
    for p in params:
        p.grad = None
    return chunk
''')
    assert not passed(check.shard_gradients, no_mean["f"])


SHARDED_LINEAR_KEEPING_THE_WEIGHTS = '''
class F(torch.autograd.Function):
    """Saves the gathered weights for backward: right numbers, but only 2 Psi of traffic and the
    full layer kept alive until backward, which is what ZeRO-3 avoids."""
    @staticmethod
    def forward(ctx, x, shard, out_features, in_features):
        world = tdist.get_world_size()
        flat = torch.empty(shard.numel() * world)
        tdist.all_gather_into_tensor(flat, shard.detach())
        weight = flat[:out_features * in_features].view(out_features, in_features)
        ctx.save_for_backward(x, weight)
        ctx.shard_numel = shard.numel()
        return x @ weight.T + flat[out_features * in_features:out_features * in_features + out_features]

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        world = tdist.get_world_size()
        grad_flat = check.flatten_padded([grad_out.T @ x, grad_out.sum(0)], world)
        grad_shard = torch.empty(ctx.shard_numel)
        tdist.reduce_scatter_tensor(grad_shard, grad_flat)
        return grad_out @ weight, grad_shard / world, None, None
'''


SHARDED_LINEAR_KEEPING_A_COPY_ON_CTX = '''
class F(torch.autograd.Function):
    """Gathers again in backward (3 Psi of traffic, right numbers) but also keeps a full copy of W
    and b on ctx until backward, which is the memory ZeRO-3 exists to free."""
    @staticmethod
    def forward(ctx, x, shard, out_features, in_features):
        world = tdist.get_world_size()
        flat = torch.empty(shard.numel() * world)
        tdist.all_gather_into_tensor(flat, shard.detach())
        n = out_features * in_features
        weight, bias = flat[:n].view(out_features, in_features), flat[n:n + out_features]
        ctx.save_for_backward(x, shard)
        ctx.full = (weight.clone(), bias.clone())
        ctx.sizes = (out_features, in_features)
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, grad_out):
        x, shard = ctx.saved_tensors
        out_features, in_features = ctx.sizes
        world = tdist.get_world_size()
        flat = torch.empty(shard.numel() * world)
        tdist.all_gather_into_tensor(flat, shard.detach())
        weight = flat[:out_features * in_features].view(out_features, in_features)
        grad_flat = check.flatten_padded([grad_out.T @ x, grad_out.sum(0)], world)
        grad_shard = torch.empty_like(shard)
        tdist.reduce_scatter_tensor(grad_shard, grad_flat)
        return grad_out @ weight, grad_shard / world, None, None
'''


def test_sharded_linear(solution):
    assert passed(check.sharded_linear, solution["ShardedLinear"])
    assert not passed(check.sharded_linear, define(SHARDED_LINEAR_KEEPING_THE_WEIGHTS)["F"])
    assert "3 Psi" in core.RESULTS[-1].message
    no_mean = define(SHARDED_LINEAR_KEEPING_THE_WEIGHTS.replace("grad_shard / world", "grad_shard"))
    assert not passed(check.sharded_linear, no_mean["F"])
    keeps_a_copy = define(SHARDED_LINEAR_KEEPING_A_COPY_ON_CTX)
    assert not passed(check.sharded_linear, keeps_a_copy["F"])  # 3 Psi traffic, but W and b kept alive
    assert "keeps" in core.RESULTS[-1].message and "save_for_backward(x, shard)" in core.RESULTS[-1].message
    views_the_gathered = define(SHARDED_LINEAR_KEEPING_A_COPY_ON_CTX.replace(
        "ctx.full = (weight.clone(), bias.clone())", "ctx.bias = bias  # a view of the whole gathered vector"))
    assert not passed(check.sharded_linear, views_the_gathered["F"])
    stub = define("class F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, *a):\n"
                  "        raise NotImplementedError('Exercise 6.5')\n")
    assert not passed(check.sharded_linear, stub["F"])
    assert core.RESULTS[-1].message.startswith("not implemented")


def test_paper_example_is_consistent_with_the_formula():
    # Figure 1 prints 2-3 significant digits: ZeRO-3's 1.875 GB appears as 1.9 GB (1.3% off)
    for stage, gb in check.PAPER_7_5B.items():
        assert math.isclose(check._memory(7.5e9, 64, stage), gb, rel_tol=0.03)
    assert not math.isclose(check._memory(7.5e9, 64, 2), check.PAPER_7_5B[3], rel_tol=0.03)  # stages stay apart
