"""Checks for notebook 07 (Megatron-LM): tensor parallelism, pipeline schedules, a real pipeline.

Exercises whose code runs on ranks are checked there: the check sends the learner's function to
the notebook's 4 ranks (:func:`course.dist.pool`), a harness below runs it next to the
single-rank layer, and the check compares in the notebook's kernel.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from .. import dist
from ..models import FeedForward, MultiHeadAttention
from .core import CheckFailed, assert_close, check, require
from .ranks import on_ranks

WORLD = 4
D_MODEL, N_HEAD, D_FF = 32, 4, 128
BATCH, SEQ = 2, 8

# The paper's Table 1 (Narayanan et al. 2021): GPT models on A100s with PTD-P.
PAPER_TABLE_1 = [
    # params (B), heads, hidden, layers, t, p, GPUs, batch, TFLOP/s per GPU, % of peak
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137, 44),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138, 44),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142, 46),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, 43),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, 44),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, 45),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, 47),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, 50),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, 52),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, 52),
]
VOCAB, SEQ_LEN = 51200, 2048  # every model of Table 1


def column_shard(weight: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s block of output rows: column-parallel (A = [A_1 ... A_t] in the paper's Y = XA)."""
    if weight.shape[0] % world:
        raise ValueError(f"{weight.shape[0]} output features do not split over {world} ranks")
    return weight.chunk(world, dim=0)[rank]


def row_shard(weight: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s block of input columns: row-parallel (B split by rows in Y = XB)."""
    if weight.shape[1] % world:
        raise ValueError(f"{weight.shape[1]} input features do not split over {world} ranks")
    return weight.chunk(world, dim=1)[rank]




# --- 7.1 parameters and FLOPs -----------------------------------------------------------------


def _params(l, h, V, s):
    return 12 * l * h * h * (1 + 13 / (12 * h) + (V + s) / (12 * l * h))


def _flops(l, h, V, s, B):
    return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))


@check
def gpt_params_and_flops(fn):
    """``fn(layers, hidden, vocab, seq, batch)`` -> (parameters, FLOPs per iteration with recomputation)."""
    cases = [(1, 12, 10, 4, 1), (2, 24, 100, 8, 2)]
    cases += [(row[3], row[2], VOCAB, SEQ_LEN, row[7]) for row in PAPER_TABLE_1]
    for l, h, V, s, B in cases:
        got = fn(l, h, V, s, B)
        require(isinstance(got, tuple) and len(got) == 2,
                f"fn(...) should return a tuple (parameters, flops), got {type(got).__name__}")
        params, flops = got
        # 1e-9 relative: closed-form expressions, only float rounding differs
        require(math.isclose(params, _params(l, h, V, s), rel_tol=1e-9),
                f"parameters for l={l}, h={h}, V={V}, s={s}: got {params:.6g}, expected {_params(l, h, V, s):.6g}\n"
                "  hint: 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h)): 12h^2 + 13h per layer, embeddings V h and s h")
        require(math.isclose(flops, _flops(l, h, V, s, B), rel_tol=1e-9),
                f"FLOPs for l={l}, h={h}, V={V}, s={s}, B={B}: got {flops:.6g}, expected {_flops(l, h, V, s, B):.6g}\n"
                "  hint: 96 B s l h^2 (1 + s/(6h) + V/(16 l h)): forward, backward (2x) and the recomputed forward")
    for row in PAPER_TABLE_1:
        billions = fn(row[3], row[2], VOCAB, SEQ_LEN, 1)[0] / 1e9
        require(abs(billions - row[0]) <= 0.051 * max(1, row[0] / 10),
                f"the {row[0]}B model of Table 1 (l={row[3]}, h={row[2]}) comes out at {billions:.1f}B")
    return f"2 small cases and the {len(PAPER_TABLE_1)} models of the paper's Table 1"


# --- 7.2 the f and g operators ------------------------------------------------------------------


def _rank_f_g(copy_to, reduce_from):
    rank, device = tdist.get_rank(), dist.device()
    out = {}
    # f: identity forward, all-reduce backward
    x = torch.arange(3.0, device=device, requires_grad=True)
    with dist.measure() as fwd:
        y = copy_to.apply(x)
    out["f_forward"] = y.detach().clone()
    with dist.measure() as bwd:
        (y * (rank + 1)).sum().backward()
    out["f_grad"] = x.grad.clone()
    out["f_traffic"] = (fwd.calls(op="all_reduce"), bwd.calls(op="all_reduce"))
    # g: all-reduce forward, identity backward
    x = torch.full((2,), float(rank + 1), device=device, requires_grad=True)
    with dist.measure() as fwd:
        y = reduce_from.apply(x)
    out["g_forward"] = y.detach().clone()
    out["g_input_unchanged"] = x.detach().clone()
    with dist.measure() as bwd:
        (y * torch.tensor([1.0, -2.0], device=device)).sum().backward()
    out["g_grad"] = x.grad.clone()
    out["g_traffic"] = (fwd.calls(op="all_reduce"), bwd.calls(op="all_reduce"))
    return out


@check
def conjugate_operators(copy_to, reduce_from):
    """f (``copy_to``): identity forward, all-reduce backward; g (``reduce_from``): the reverse."""
    out = on_ranks(_rank_f_g, copy_to, reduce_from)
    for rank, r in enumerate(out.results):
        # exact: small integers, sums of 4 of them
        assert_close(r["f_forward"], torch.arange(3.0), atol=0, rtol=0, name=f"f forward on rank {rank}",
                     hint="f is the identity in the forward pass")
        assert_close(r["f_grad"], torch.full((3,), 10.0), atol=0, rtol=0, name=f"f backward on rank {rank}",
                     hint="f's backward all-reduces (sums) the incoming gradient: rank r sent r + 1, the sum is 10")
        require(r["f_traffic"] == (0, 1), f"f should do no all-reduce forward and one backward; rank {rank} did "
                                          f"{r['f_traffic'][0]} forward and {r['f_traffic'][1]} backward")
        assert_close(r["g_forward"], torch.full((2,), 10.0), atol=0, rtol=0, name=f"g forward on rank {rank}",
                     hint="g sums its input over the ranks (1 + 2 + 3 + 4)")
        assert_close(r["g_input_unchanged"], torch.full((2,), rank + 1.0), atol=0, rtol=0,
                     name=f"g's input on rank {rank} after the call",
                     hint="all-reduce a clone: all_reduce works in place and must not change the input")
        assert_close(r["g_grad"], torch.tensor([1.0, -2.0]), atol=0, rtol=0, name=f"g backward on rank {rank}",
                     hint="g's backward is the identity: every rank already holds the full gradient")
        require(r["g_traffic"] == (1, 0), f"g should do one all-reduce forward and none backward; rank {rank} did "
                                          f"{r['g_traffic'][0]} forward and {r['g_traffic'][1]} backward")
    return "f and g forward, backward and their all-reduce counts on 4 ranks"


# --- 7.3 and 7.4: the parallel MLP and attention ------------------------------------------------


def _layer_input(seed: int, device=None) -> torch.Tensor:
    """The layer's input, drawn on the CPU (the same numbers everywhere), on ``device`` (default: this
    rank's, :func:`course.dist.device`)."""
    torch.manual_seed(seed)
    return torch.randn(BATCH, SEQ, D_MODEL).to(dist.device() if device is None else device)


def _rank_parallel_mlp(parallel_mlp, d_model, d_ff):
    rank, world = tdist.get_rank(), tdist.get_world_size()
    torch.manual_seed(0)
    mlp = FeedForward(d_model, d_ff).to(dist.device())  # initialised on the CPU, then moved
    shards = [column_shard(mlp.up.weight, rank, world), mlp.up.bias.chunk(world)[rank],
              row_shard(mlp.down.weight, rank, world), mlp.down.bias]
    shards = [s.detach().clone().requires_grad_() for s in shards]
    x = _layer_input(1)[:, :, :d_model].contiguous().requires_grad_()
    with dist.measure() as traffic:
        y = parallel_mlp(x, *shards)
        y.pow(2).sum().backward()
    return y.detach(), x.grad, [s.grad for s in shards], traffic


def local_heads(n_head: int, world: int) -> int:
    """Heads per rank when ``n_head`` heads are split over ``world`` tensor-parallel ranks."""
    if n_head % world:
        raise ValueError(f"{n_head} attention heads do not split over {world} tensor-parallel ranks: the number "
                         f"of heads must be divisible by the tensor-parallel size (each rank computes whole "
                         f"heads); run on a number of ranks that divides {n_head}")
    return n_head // world


def _rank_parallel_attention(parallel_attention, d_model, n_head):
    rank, world = tdist.get_rank(), tdist.get_world_size()
    n_local = local_heads(n_head, world)
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model, n_head).to(dist.device())
    shards = [column_shard(attn.q_proj.weight, rank, world), column_shard(attn.k_proj.weight, rank, world),
              column_shard(attn.v_proj.weight, rank, world), row_shard(attn.out_proj.weight, rank, world)]
    shards = [s.detach().clone().requires_grad_() for s in shards]
    x = _layer_input(2)[:, :, :d_model].contiguous().requires_grad_()
    with dist.measure() as traffic:
        y = parallel_attention(x, *shards, n_local)
        y.pow(2).sum().backward()
    return y.detach(), x.grad, [s.grad for s in shards], traffic


def _compare_tp(out, module, x, shard_of, names, what, hint):
    x = x.clone().requires_grad_()
    y = module(x)
    y.pow(2).sum().backward()
    grads = [p.grad for p in module.parameters()]
    elements = x.numel()
    for rank, (y_r, x_grad, shard_grads, traffic) in enumerate(out.results):
        # 1e-5: float32 matmuls split over 4 ranks sum the same products in a different order
        assert_close(y_r, y.detach(), atol=1e-5, rtol=1e-4, name=f"{what} output on rank {rank}", hint=hint)
        assert_close(x_grad, x.grad, atol=1e-5, rtol=1e-4, name=f"{what} input gradient on rank {rank}",
                     hint="the input gradient is a sum over the ranks' column blocks: f's backward all-reduce")
        for name, g_r, full, shard in zip(names, shard_grads, grads, shard_of):
            require(g_r is not None, f"{what}: {name} on rank {rank} got no gradient")
            assert_close(g_r, shard(full, rank), atol=1e-5, rtol=1e-4, name=f"{what} {name} gradient on rank {rank}")
        expected = 2 * 2 * (WORLD - 1) / WORLD * elements * 4  # one all-reduce forward (g), one backward (f)
        require(traffic.sent(op="all_reduce") == expected and traffic.calls(op="all_reduce") == 2,
                f"{what} on rank {rank}: {traffic.calls(op='all_reduce')} all-reduce(s), {traffic.sent():,.0f} bytes; "
                f"expected exactly two all-reduces of the (b, s, h) activations ({expected:,.0f} bytes): "
                "g in the forward pass and f in the backward pass")


@check
def parallel_mlp(fn):
    """``fn(x, up_w, up_b, down_w, down_b)``: column- then row-parallel MLP with f and g."""
    for d_model, d_ff in ((4, 8), (D_MODEL, D_FF)):  # smallest first
        out = on_ranks(_rank_parallel_mlp, fn, d_model, d_ff)
        torch.manual_seed(0)
        mlp = FeedForward(d_model, d_ff)
        x = _layer_input(1, "cpu")[:, :, :d_model].contiguous()
        _compare_tp(out, mlp, x,
                    [lambda w, r: column_shard(w, r, WORLD), lambda b, r: b.chunk(WORLD)[r],
                     lambda w, r: row_shard(w, r, WORLD), lambda b, r: b],
                    ["up.weight", "up.bias", "down.weight", "down.bias"], f"MLP(d={d_model}, d_ff={d_ff})",
                    "Y = relu(f(X) A_i^T + a_i); Z = g(Y B_i^T) + b: add the output bias once, after g")
    return "d=4 and d=32 MLPs: output, input and weight gradients, two all-reduces of b*s*h"


@check
def parallel_attention(fn):
    """``fn(x, q_w, k_w, v_w, out_w, n_local_heads)``: attention with whole heads on each rank."""
    for d_model, n_head in ((8, 4), (D_MODEL, N_HEAD)):
        out = on_ranks(_rank_parallel_attention, fn, d_model, n_head)
        torch.manual_seed(0)
        attn = MultiHeadAttention(d_model, n_head)
        x = _layer_input(2, "cpu")[:, :, :d_model].contiguous()
        col = lambda w, r: column_shard(w, r, WORLD)  # noqa: E731
        _compare_tp(out, attn, x, [col, col, col, lambda w, r: row_shard(w, r, WORLD)],
                    ["q_proj", "k_proj", "v_proj", "out_proj"], f"attention(d={d_model}, heads={n_head})",
                    "each rank computes its n_head/t heads completely (causal softmax(q k^T / sqrt(d_head)) v), "
                    "then its block of out_proj; g sums the blocks")
    return "4 heads over 4 ranks at d=8 and d=32: output, input and weight gradients, two all-reduces"


# --- 7.5 the 1F1B schedule ----------------------------------------------------------------------


def simulate(orders, p, t_f=1.0, t_b=2.0, v=1):
    """Time a pipeline schedule: ``orders[d]`` lists device d's ops ``(kind, microbatch[, chunk])``.

    Chunk c on device d is virtual stage c*p + d of p*v. F(mb, s) waits for F(mb, s-1); B(mb, s)
    waits for B(mb, s+1) and F(mb, s). Returns (timeline rows, makespan); raises ValueError on a
    schedule that can never finish (a deadlock) or that repeats or misses work.
    """
    stages = p * v
    done: dict = {}
    position = [0] * p
    free = [0.0] * p
    timeline = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for d in range(p):
            while position[d] < len(orders[d]):
                op = orders[d][position[d]]
                kind, mb, chunk = (op + (0,))[:3] if len(op) == 2 else op
                s = chunk * p + d
                if kind == "F":
                    deps = [("F", mb, s - 1)] if s > 0 else []
                elif kind == "B":
                    deps = [("F", mb, s)] + ([("B", mb, s + 1)] if s < stages - 1 else [])
                else:
                    raise ValueError(f"device {d}: op kind must be 'F' or 'B', got {kind!r}")
                if any(dep not in done for dep in deps):
                    break
                if (kind, mb, s) in done:
                    raise ValueError(f"device {d} runs {kind} of microbatch {mb} (chunk {chunk}) twice")
                start = max([free[d]] + [done[dep] for dep in deps])
                end = start + (t_f if kind == "F" else t_b) / v
                done[(kind, mb, s)] = end
                free[d] = end
                timeline.append({"device": d, "kind": kind, "microbatch": mb, "chunk": chunk, "start": start,
                                 "end": end})
                position[d] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {d: orders[d][position[d]] for d in range(p) if position[d] < len(orders[d])}
            raise ValueError(f"the schedule deadlocks: every device waits ({stuck})")
    return timeline, max(free)


def in_flight(timeline, p, v=1):
    """Most microbatches whose forward ran and backward did not, per device (a stage's activations)."""
    peak = [0.0] * p
    for d in range(p):
        # a forward's activations exist from its end to the start of its backward; at equal times
        # count the arrival first (both are held at that instant)
        events = sorted((r["end"] if r["kind"] == "F" else r["start"], -1 if r["kind"] == "F" else 1)
                        for r in timeline if r["device"] == d)
        level = 0.0
        for _, negated in events:
            level -= negated / v
            peak[d] = max(peak[d], level)
    return peak


def _reference_1f1b(p, m, stage):
    warmup = min(p - stage - 1, m)
    order = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(m - warmup, m)]


@check
def one_f_one_b(fn):
    """``fn(p, m, stage)``: device ``stage``'s 1F1B order of ("F", mb) and ("B", mb) ops."""
    for p, m in ((1, 1), (2, 1), (2, 2), (2, 4), (4, 4), (4, 8), (4, 2), (8, 16)):
        orders = [fn(p, m, d) for d in range(p)]
        for d, order in enumerate(orders):
            require(isinstance(order, list) and all(isinstance(o, tuple) and len(o) == 2 for o in order),
                    f"fn({p}, {m}, {d}) should return a list of (kind, microbatch) tuples, got {order!r}"[:300])
            require(sorted(order) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)]),
                    f"fn({p}, {m}, {d}) must run F and B of every microbatch 0..{m - 1} exactly once, got {order}")
        try:
            timeline, makespan = simulate(orders, p)
        except ValueError as error:
            raise CheckFailed(f"p={p}, m={m}: {error}") from None
        # exact: the simulator adds durations 1 and 2
        ideal = m * 3.0
        require(math.isclose((makespan - ideal) / ideal, (p - 1) / m),
                f"p={p}, m={m}: the bubble is {(makespan - ideal) / ideal:.3f} of the ideal time, the paper's "
                f"(p-1)/m = {(p - 1) / m:.3f}\n  hint: run a backward as soon as one is possible (one forward, "
                "then one backward, in the steady state)")
        peak = in_flight(timeline, p)
        require(max(peak) <= min(p, m),
                f"p={p}, m={m}: a device held {max(peak):g} microbatches' activations; 1F1B holds at most p = {p} "
                f"(GPipe holds all m = {m})\n  hint: device d runs only p - d - 1 forwards before its first backward")
    return "8 (p, m) pairs: every op once, no deadlock, bubble (p-1)/m, at most p microbatches in flight"


# --- 7.6 a real 1F1B pipeline -------------------------------------------------------------------

PIPE_WIDTH, PIPE_LAYERS, PIPE_ROWS, PIPE_MICRO = 16, 8, 16, 8


def _device(device) -> torch.device:
    """``device``, or this rank's device (:func:`course.dist.device`: a GPU on NCCL, else the CPU)."""
    return dist.device() if device is None else torch.device(device)


def pipeline_model(seed: int = 0, device=None) -> nn.Sequential:
    """Eight Linear(16, 16) + tanh blocks: the model the pipeline splits into 4 stages of 2, on
    ``device`` (default: this rank's); initialised on the CPU, so the same values everywhere."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(PIPE_LAYERS):
        layers += [nn.Linear(PIPE_WIDTH, PIPE_WIDTH), nn.Tanh()]
    return nn.Sequential(*layers).to(_device(device))


def pipeline_data(seed: int = 1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (16 rows of 16), drawn on the CPU, on ``device`` (default: this rank's)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(PIPE_ROWS, PIPE_WIDTH, generator=g), torch.randn(PIPE_ROWS, PIPE_WIDTH, generator=g)
    return x.to(_device(device)), y.to(_device(device))


def stage_of(model: nn.Sequential, stage: int, stages: int) -> nn.Sequential:
    """Stage ``stage`` of ``stages``: an equal run of consecutive modules."""
    if len(model) % stages:
        raise ValueError(f"{len(model)} modules do not split into {stages} equal stages")
    per = len(model) // stages
    return model[stage * per:(stage + 1) * per]


def _rank_pipeline(pipeline_1f1b, m):
    """On a rank: this rank's stage of the model, the learner's 1F1B, its loss and gradients."""
    rank, world = tdist.get_rank(), tdist.get_world_size()
    stage = stage_of(pipeline_model(), rank, world)
    x, y = pipeline_data()
    micro_x = list(x.chunk(m)) if rank == 0 else None
    micro_y = list(y.chunk(m)) if rank == world - 1 else None
    order = []  # "F" each time the stage runs forward, "B" each time a backward reaches its first layer
    stage.register_forward_hook(lambda *_: order.append("F"))
    next(stage.parameters()).register_hook(lambda grad: order.append("B"))
    with dist.measure() as traffic, dist.p2p.record() as groups:
        loss = pipeline_1f1b(stage, m, micro_x, micro_y, (PIPE_ROWS // m, PIPE_WIDTH))
    return (None if loss is None else float(loss)), [p.grad for p in stage.parameters()], traffic, order, groups


def _peak_in_flight(order) -> int:
    """The most microbatches whose forward has run and whose backward has not, in a stage's order."""
    peak = live = 0
    for op in order:
        live += 1 if op == "F" else -1
        peak = max(peak, live)
    return peak


@check
def pipeline_1f1b(fn):
    """``fn(stage, m, microbatches, targets, shape)`` runs 1F1B over 4 ranks; loss and grads = one rank's."""
    for m in (1, 4, 8):  # smallest first
        out = on_ranks(_rank_pipeline, fn, m)
        model = pipeline_model(device="cpu")
        x, y = pipeline_data(device="cpu")
        loss = F.mse_loss(model(x), y)
        loss.backward()
        last = out.results[WORLD - 1][0]
        require(last is not None, "the last stage must return the loss (the mean over microbatches)")
        # 1e-6: float32; the mean of m microbatch means sums in another order than one big mean
        require(math.isclose(last, loss.item(), rel_tol=1e-5, abs_tol=1e-6),
                f"m={m}: pipeline loss {last:.7f}, single-rank loss {loss.item():.7f}\n  hint: the loss of one "
                "microbatch is mse(output, target) / m, so that the gradients add up to the full batch's")
        for rank, (_, grads, traffic, order, _groups) in enumerate(out.results):
            want = [p.grad for p in stage_of(model, rank, WORLD).parameters()]
            for i, (g, w) in enumerate(zip(grads, want)):
                require(g is not None, f"m={m}: parameter {i} of stage {rank} got no gradient")
                assert_close(g, w, atol=1e-6, rtol=1e-4, name=f"m={m}: gradient of parameter {i} of stage {rank}",
                             hint="send the input's gradient (x.grad) back to the previous stage after backward")
            act = (PIPE_ROWS // m) * PIPE_WIDTH * 4
            sends = (m * act if rank < WORLD - 1 else 0) + (m * act if rank > 0 else 0)
            require(traffic.sent(op={"send", "isend"}) == sends and traffic.sent() == sends,
                    f"m={m}: stage {rank} sent {traffic.sent():,.0f} bytes; expected one activation per microbatch "
                    f"forward (unless last) and one gradient backward (unless first): {sends:,} bytes, by send/isend")
            require(order.count("F") == m and order.count("B") == m,
                    f"m={m}: stage {rank} ran its forward {order.count('F')} times and its backward "
                    f"{order.count('B')} times; expected once per microbatch ({m})")
            limit = min(m, WORLD - rank)  # 1F1B: p - stage - 1 warm-up forwards, then one F, one B
            require(_peak_in_flight(order) <= limit,
                    f"m={m}: stage {rank} ran {''.join(order)}: {_peak_in_flight(order)} microbatches in flight, "
                    f"1F1B holds at most p - stage = {limit}\n  hint: that is GPipe's order (all forwards, then "
                    "all backwards); follow one_f_one_b(p, m, stage): warm up with p - stage - 1 forwards, then "
                    "alternate one forward and one backward")
        # the same calls under NCCL's rule (a send completes only when its receive is posted; no tags)
        why = dist.p2p.replay({rank: r[4] for rank, r in enumerate(out.results)}, WORLD)
        require(why is None,
                f"m={m}: your sends and receives ran here on gloo, but replayed under NCCL's rule they can hang: "
                f"{why}\n  hint: gloo buffers sends and matches tags; NCCL does neither. Post each op's send "
                "together with the receive the next op needs, in one tdist.batch_isend_irecv, and wait for both")
    return ("m = 1, 4, 8 microbatches: loss and every stage's gradients equal one rank's; point-to-point bytes; "
            "NCCL-safe order")
