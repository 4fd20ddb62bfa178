"""Checks for notebook 06 (ZeRO), and the small model, data and Adam that the notebook and the
checks share, so that a check trains exactly what the notebook trains.

Exercises whose code runs on ranks are checked on ranks: the check hands the learner's function
to :func:`course.dist.pool` (the notebook's own 4 ranks), a harness function below calls it there
and returns what it saw, and the check compares that with the single-process answer here.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from .. import dist
from ..parallel.measure import tensors_in
from .core import CheckFailed, assert_close, check, require
from .ranks import on_ranks

WORLD = 4  # ranks the notebook and the checks use
IN, HIDDEN, OUT = 32, 64, 10  # 2112 + 4160 + 650 = 6922 parameters; the last layer's 650 is not a multiple of 4
GLOBAL_BATCH = 32
LR = 1e-3
BETAS, EPS = (0.9, 0.999), 1e-8


# --- what the notebook and the checks share -----------------------------------------------------


def data_parallel_ranks(world, notebook: str = "06") -> int:
    """``world``, the number of ranks the notebook was started with, if notebook 06 (or 08, which
    trains the same model) can run on it.

    ZeRO and PaRO partition model states over N >= 2 data-parallel ranks (with one there is nothing to
    partition or send, and the traffic in units of N/(N-1) divides by zero), and each rank trains on
    an equal slice of the 32-row global batch. Called where the notebook reads its world size, so that
    ``torchrun --nproc-per-node 1`` stops there with the rule instead of deep inside a cell.
    """
    if isinstance(world, bool) or not isinstance(world, int):
        raise ValueError(f"notebook {notebook} needs a whole number of ranks; got {world!r}")
    if world < 2:
        raise ValueError(
            f"notebook {notebook} needs at least 2 ranks; got {world}: its data-parallel stages partition the "
            "model states over N >= 2 ranks (with one there is nothing to partition or send). Start torchrun with "
            "--nproc-per-node 2 or more (on a machine with fewer GPUs than ranks they run on gloo, on the CPU), "
            "or run the notebook without torchrun for 4 local ranks")
    if GLOBAL_BATCH % world:
        divisors = [n for n in range(2, GLOBAL_BATCH + 1) if GLOBAL_BATCH % n == 0]
        raise ValueError(f"notebook {notebook} needs a number of ranks that divides its global batch of {GLOBAL_BATCH} "
                         f"rows (each rank trains on an equal slice): one of {divisors}; got {world}")
    return world


def _device(device) -> torch.device:
    """``device``, or this rank's device (:func:`course.dist.device`: a GPU on NCCL, else the CPU)."""
    return dist.device() if device is None else torch.device(device)


def tiny_mlp(seed: int = 0, device=None) -> nn.Sequential:
    """Three Linear layers with ReLUs: 32 -> 64 -> 64 -> 10, initialised from ``seed``, on ``device``
    (default: this rank's, :func:`course.dist.device`). Initialised on the CPU and then moved, so the
    values are the same on every device."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, OUT)).to(_device(device))


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def batch(step: int, rank: int | None = None, world_size: int = 1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s global batch (32 rows), or rank ``rank``'s equal slice of it, on ``device``
    (default: this rank's). Drawn on the CPU (the same numbers everywhere), then moved."""
    if GLOBAL_BATCH % world_size:
        raise ValueError(f"world_size must divide the global batch of {GLOBAL_BATCH}, got {world_size}")
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, IN, generator=g)
    y = torch.randn(GLOBAL_BATCH, OUT, generator=g)
    where = _device(device)
    if rank is None:
        return x.to(where), y.to(where)
    rows = GLOBAL_BATCH // world_size
    return x[rank * rows:(rank + 1) * rows].to(where), y[rank * rows:(rank + 1) * rows].to(where)


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error: the mean over a rank's rows; the mean of the ranks' gradients is then the
    gradient of the global batch (equal slices)."""
    return F.mse_loss(output, target)


def new_adam_state(params: torch.Tensor) -> dict:
    """Adam's state for a flat fp32 tensor: the master copy of the parameters and both moments.

    12 bytes per parameter (K = 12 in the paper): master 4 + momentum 4 + variance 4.
    """
    master = params.detach().to(torch.float32).clone()
    return {"master": master, "m": torch.zeros_like(master), "v": torch.zeros_like(master), "step": 0}


@torch.no_grad()
def adam_update(state: dict, grad: torch.Tensor, lr: float = LR) -> None:
    """One Adam step on ``state['master']`` in place (torch.optim.Adam's formula, no weight decay).

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    """
    if grad.shape != state["master"].shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but the state holds {tuple(state['master'].shape)}")
    b1, b2 = BETAS
    state["step"] += 1
    t = state["step"]
    state["m"].mul_(b1).add_(grad, alpha=1 - b1)
    state["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denominator = (state["v"] / (1 - b2 ** t)).sqrt_().add_(EPS)
    state["master"].addcdiv_(state["m"], denominator, value=-lr / (1 - b1 ** t))


def padded_numel(numel: int, world_size: int) -> int:
    """``numel`` rounded up to a multiple of ``world_size`` (so that every rank's shard is equal)."""
    return math.ceil(numel / world_size) * world_size


def flatten_padded(tensors, world_size: int) -> torch.Tensor:
    """The tensors, flattened and concatenated, with zeros appended up to a multiple of ``world_size``."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    return F.pad(flat, (0, padded_numel(flat.numel(), world_size) - flat.numel()))


@torch.no_grad()
def write_flat(params, flat: torch.Tensor) -> None:
    """Copy consecutive pieces of ``flat`` into ``params`` (the padding at the end is ignored)."""
    offset = 0
    for p in params:
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct tensors in ``objects`` (tensors, lists, tuples, dicts, modules' parameters)."""
    distinct = {id(t): t.numel() * t.element_size() for t in tensors_in(*objects)}
    return sum(distinct.values())


def reference_training(steps: int, lr: float = LR) -> torch.Tensor:
    """The single-process answer: full-batch Adam for ``steps`` steps, on the CPU (where the ranks'
    results arrive); returns the flat parameters."""
    model = tiny_mlp(device="cpu")
    params = list(model.parameters())
    state = new_adam_state(flatten_padded(params, 1))
    for step in range(steps):
        x, y = batch(step, device="cpu")
        model.zero_grad()
        loss_fn(model(x), y).backward()
        adam_update(state, flatten_padded([p.grad for p in params], 1), lr)
        write_flat(params, state["master"])
    return flatten_padded(params, 1)


# --- memory formulas (exercise 6.1) ------------------------------------------------------------

PAPER_7_5B = {0: 120e9, 1: 31.4e9, 2: 16.6e9, 3: 1.9e9}  # ZeRO paper, Figure 1: 7.5B parameters, N = 64


def _memory(psi, n, stage, k=12, param_bytes=2, grad_bytes=2):
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    p, g, o = param_bytes * psi, grad_bytes * psi, k * psi
    return {0: p + g + o, 1: p + g + o / n, 2: p + (g + o) / n, 3: (p + g + o) / n}[stage]


@check
def zero_memory(fn):
    """``fn(psi, n, stage, k=12, param_bytes=2, grad_bytes=2)``: model-state bytes per device."""
    cases = [(1, 1, 0), (1, 2, 1), (1, 2, 2), (1, 2, 3), (100, 4, 1), (100, 4, 2), (100, 4, 3),
             (7.5e9, 64, 0), (7.5e9, 64, 1), (7.5e9, 64, 2), (7.5e9, 64, 3)]
    hints = {1: "stage 1 (P_os) shards only the optimizer states: 2Psi + 2Psi + K Psi / N",
             2: "stage 2 (P_os+g) shards gradients too: 2Psi + (2 + K) Psi / N",
             3: "stage 3 (P_os+g+p) shards everything: (2 + 2 + K) Psi / N"}
    for psi, n, stage in cases:
        got = fn(psi, n, stage)
        want = _memory(psi, n, stage)
        require(isinstance(got, (int, float)) and not isinstance(got, bool),
                f"fn({psi}, {n}, {stage}) should return a number of bytes, got {type(got).__name__}")
        # relative 1e-9: the formula is exact; only float rounding of 7.5e9-sized products differs
        require(math.isclose(got, want, rel_tol=1e-9),
                f"fn(psi={psi:g}, n={n}, stage={stage}) returned {got:g} bytes, expected {want:g}"
                + (f"\n  hint: {hints[stage]}" if stage in hints else ""))
    # The figure rounds to 2-3 significant digits: 1.875 GB is printed as 1.9 (1.3% off), so 3%
    for stage, paper in PAPER_7_5B.items():
        require(abs(fn(7.5e9, 64, stage) - paper) / paper < 0.03,
                f"stage {stage} for 7.5B parameters on 64 GPUs should be about {paper / 1e9:g} GB (paper, Fig. 1)")
    got = fn(1000, 8, 3, k=8, param_bytes=4, grad_bytes=4)
    require(math.isclose(got, _memory(1000, 8, 3, 8, 4, 4), rel_tol=1e-12),
            f"with k=8, param_bytes=4, grad_bytes=4 (fp32 Adam), stage 3 at psi=1000, n=8 should be "
            f"{_memory(1000, 8, 3, 8, 4, 4):g} bytes, got {got:g}: use the k, param_bytes and grad_bytes arguments")
    try:
        fn(10, 2, 4)
    except ValueError:
        pass
    else:
        raise CheckFailed("fn(10, 2, stage=4) should raise ValueError: ZeRO has stages 0 (plain DP) to 3")
    return "11 cases incl. the paper's 7.5B / 64 GPU example, fp32 arguments, a bad stage"


# --- running learner code on ranks (see course.checks.ranks) ------------------------------------


def _rank_grads_after(allreduce_gradients, per_rank_grads):
    """On a rank: set known gradients, call the learner's all-reduce, return what it left."""
    rank, device = tdist.get_rank(), dist.device()
    with torch.no_grad():
        model = nn.Sequential(nn.Linear(2, 1)).to(device)
    for p, grads in zip(model.parameters(), per_rank_grads):
        p.grad = grads[rank].to(device)  # sent from the kernel on the CPU
    allreduce_gradients(model)
    return [p.grad.clone() for p in model.parameters()]


def _rank_ddp_grads(allreduce_gradients):
    """On a rank: the tiny MLP's gradient on this rank's slice, then averaged by the learner's code."""
    rank, world = tdist.get_rank(), tdist.get_world_size()
    model = tiny_mlp()
    x, y = batch(0, rank, world)
    loss_fn(model(x), y).backward()
    with dist.measure() as traffic:
        allreduce_gradients(model)
    return flatten_padded([p.grad for p in model.parameters()], 1), traffic


def _full_batch_grad() -> torch.Tensor:
    model = tiny_mlp(device="cpu")
    x, y = batch(0, device="cpu")
    loss_fn(model(x), y).backward()
    return flatten_padded([p.grad for p in model.parameters()], 1)


@check
def allreduce_gradients(fn):
    """``fn(model)`` replaces every ``p.grad`` by its mean over the ranks, with all_reduce."""
    # smallest case: one Linear(2, 1); rank r's gradients are (r + 1) times ones, mean 2.5
    per_rank = [[torch.full((1, 2), r + 1.0) for r in range(WORLD)], [torch.full((1,), r + 1.0)
                                                                    for r in range(WORLD)]]
    out = on_ranks(_rank_grads_after, fn, per_rank)
    for rank, grads in enumerate(out.results):
        # exact: sums and a division by 4 of small integers are exact in float32
        assert_close(grads[0], torch.full((1, 2), 2.5), atol=0, rtol=0, name=f"rank {rank}'s weight gradient",
                     hint="sum with all_reduce, then divide by the world size (the mean, not the sum)")
        assert_close(grads[1], torch.full((1,), 2.5), atol=0, rtol=0, name=f"rank {rank}'s bias gradient")
    out = on_ranks(_rank_ddp_grads, fn)
    want = _full_batch_grad()
    psi = want.numel()
    for rank, (grad, traffic) in enumerate(out.results):
        # 1e-6: float32 sums of 4 partial gradients in a different order than one full-batch backward
        assert_close(grad, want, atol=1e-6, rtol=1e-5, name=f"rank {rank}'s averaged MLP gradient",
                     hint="every parameter's gradient must be averaged, weights and biases")
        expected = 2 * (WORLD - 1) / WORLD * psi * 4
        require(traffic.sent(op="all_reduce") == expected and traffic.sent() == expected,
                f"rank {rank} sent {traffic.sent():,.0f} bytes ({dict((k[0], v[1]) for k, v in traffic.counts.items())}),"
                f" expected exactly one all_reduce of every gradient: 2 (N-1)/N x {psi} x 4 = {expected:,.0f} bytes")
    return f"Linear(2,1) with known gradients; the {psi}-parameter MLP; traffic 2(N-1)/N Psi x 4 B"


# --- ZeRO-1 -----------------------------------------------------------------------------------


def _rank_zero1(zero1_step, steps: int):
    rank, world = tdist.get_rank(), tdist.get_world_size()
    model = tiny_mlp()
    params = list(model.parameters())
    flat = flatten_padded(params, world)
    shard = flat.numel() // world
    state = new_adam_state(flat[rank * shard:(rank + 1) * shard])
    with dist.measure() as traffic:
        for step in range(steps):
            x, y = batch(step, rank, world)
            model.zero_grad()
            loss_fn(model(x), y).backward()
            zero1_step(model, state, LR)
    return flatten_padded(params, 1), tensor_bytes(state), traffic


def _params_tolerance_note() -> str:
    return ("1e-5 after 3 steps: the gradients differ from the full-batch ones by float32 rounding "
            "(~1e-7 relative); Adam divides by sqrt(v), so a step moves each weight by at most ~lr = 1e-3")


@check
def zero1_step(fn):
    """``fn(model, state, lr)``: reduce-scatter the gradients, Adam on this rank's shard, all-gather."""
    steps = 3
    out = on_ranks(_rank_zero1, fn, steps)
    want = reference_training(steps)
    psi = want.numel()
    padded = padded_numel(psi, WORLD)
    for rank, (params, state_bytes, traffic) in enumerate(out.results):
        # see _params_tolerance_note: 1e-5 absolute after 3 Adam steps of lr 1e-3
        assert_close(params, want, atol=1e-5, rtol=0, name=f"rank {rank}'s parameters after {steps} steps",
                     hint="divide the reduce-scattered gradient by the world size, and all-gather every "
                          "rank's updated shard back into the model (write_flat)")
        require(state_bytes == 12 * padded // WORLD,
                f"rank {rank}'s optimizer state holds {state_bytes} bytes, expected 12 x {padded} / {WORLD}")
        rs, ag = traffic.sent(op="reduce_scatter"), traffic.sent(op="all_gather")
        expected = steps * (WORLD - 1) * padded // WORLD * 4
        require(rs == expected and ag == expected and traffic.sent() == 2 * expected,
                f"rank {rank} sent reduce_scatter {rs:,.0f} B, all_gather {ag:,.0f} B, {traffic.sent():,.0f} B in "
                f"all over {steps} steps; expected {expected:,} B each and nothing else (one reduce-scatter of the "
                "padded gradient and one all-gather of the parameters per step)")
    return f"{steps} steps equal full-batch Adam (atol 1e-5); state 12 Psi/N bytes; traffic 2 (N-1)/N Psi"


# --- ZeRO-2 -----------------------------------------------------------------------------------


def _rank_shard_gradients(shard_gradients):
    rank, world = tdist.get_rank(), tdist.get_world_size()
    device = dist.device()
    # smallest case: a bucket of one 3-element tensor (padded to 4): rank r holds r + 1 everywhere
    p = torch.zeros(3, device=device, requires_grad=True)
    p.grad = torch.full((3,), rank + 1.0, device=device)
    small = shard_gradients([p])
    small_freed = p.grad is None
    # the MLP's last layer (650 parameters, padded to 652) as a bucket
    model = tiny_mlp()
    x, y = batch(0, rank, world)
    loss_fn(model(x), y).backward()
    last = list(linear_layers(model)[-1].parameters())
    with dist.measure() as traffic:
        shard = shard_gradients(last)
    return small, small_freed, shard, all(q.grad is None for q in last), traffic


@check
def shard_gradients(fn):
    """``fn(params)`` returns this rank's 1/N of the bucket's averaged, padded gradient and frees the grads."""
    out = on_ranks(_rank_shard_gradients, fn)
    model = tiny_mlp(device="cpu")
    x, y = batch(0, device="cpu")
    loss_fn(model(x), y).backward()
    full = flatten_padded([torch.cat([p.grad.reshape(-1) for p in linear_layers(model)[-1].parameters()])], WORLD)
    chunk = full.numel() // WORLD
    for rank, (small, small_freed, shard, freed, traffic) in enumerate(out.results):
        # exact: the mean of 1, 2, 3, 4 is 2.5; the padding element is 0
        want_small = torch.tensor([2.5]) if rank < 3 else torch.tensor([0.0])
        assert_close(small, want_small, atol=0, rtol=0, name=f"rank {rank}'s shard of a 3-element bucket",
                     hint="pad the flat gradient to a multiple of the world size, reduce-scatter, divide by N; "
                          "rank r keeps elements [r * n/N, (r+1) * n/N)")
        require(small_freed and freed, f"rank {rank}: after sharding, p.grad must be None (set it to None) "
                                       "so the full gradient is freed: that is the memory ZeRO-2 saves")
        # 1e-6: float32 sums of 4 partial gradients in a different order than one full-batch backward
        assert_close(shard, full[rank * chunk:(rank + 1) * chunk], atol=1e-6, rtol=1e-5,
                     name=f"rank {rank}'s shard of the last layer's gradient")
        expected = (WORLD - 1) * chunk * 4
        require(traffic.sent(op="reduce_scatter") == expected and traffic.sent() == expected,
                f"rank {rank} sent {traffic.sent():,.0f} B; one reduce-scatter of the padded bucket sends "
                f"(N-1) x {chunk} x 4 = {expected:,} B (an all_reduce would send twice that)")
    return "3-element bucket with padding, the 650-parameter layer, grads freed, reduce-scatter traffic"


# --- ZeRO-3 -----------------------------------------------------------------------------------


def _rank_sharded_linear(sharded_linear):
    rank, world, device = tdist.get_rank(), tdist.get_world_size(), dist.device()
    results = []
    for out_f, in_f, rows in ((1, 2, 1), (3, 5, 4), (HIDDEN, IN, 8)):  # smallest first
        torch.manual_seed(out_f * 100 + in_f)
        layer = nn.Linear(in_f, out_f).to(device)  # initialised on the CPU: the kernel's values
        flat = flatten_padded([layer.weight, layer.bias], world)
        chunk = flat.numel() // world
        shard = flat[rank * chunk:(rank + 1) * chunk].clone().requires_grad_(True)
        torch.manual_seed(7 + rank)
        x = torch.randn(rows, in_f).to(device).requires_grad_(True)
        with dist.measure() as traffic:
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
                y = sharded_linear.apply(x, shard, out_f, in_f)
            kept = _kept_for_backward(saved, y.grad_fn, allowed=(x, shard))
            y.pow(2).sum().backward()
        results.append((y.detach(), x.grad, shard.grad, traffic, kept))
    return results


def _kept_for_backward(saved, ctx, allowed) -> int:
    """Bytes of the storages the layer keeps until backward (``save_for_backward`` and tensors
    on ``ctx``), besides those of ``allowed`` (the input and the shard)."""
    tensors = list(saved)
    for value in vars(ctx).values() if ctx is not None and hasattr(ctx, "__dict__") else ():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        tensors += [v for v in values if isinstance(v, torch.Tensor)]
    skip = {t.untyped_storage().data_ptr() for t in allowed}
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@check
def sharded_linear(fn):
    """``fn.apply(x, shard, out_features, in_features)``: ZeRO-3's gather-compute-free Linear layer."""
    out = on_ranks(_rank_sharded_linear, fn)
    sizes = ((1, 2, 1), (3, 5, 4), (HIDDEN, IN, 8))
    for case, (out_f, in_f, rows) in enumerate(sizes):
        torch.manual_seed(out_f * 100 + in_f)
        layer = nn.Linear(in_f, out_f)
        xs = []
        for rank in range(WORLD):
            torch.manual_seed(7 + rank)
            xs.append(torch.randn(rows, in_f, requires_grad=True))
        total = sum(layer(x).pow(2).sum() for x in xs)
        total.backward()
        # each rank's loss is its own; the averaged gradient is the full one divided by N
        flat_grad = flatten_padded([layer.weight.grad, layer.bias.grad], WORLD) / WORLD
        chunk = flat_grad.numel() // WORLD
        numel = out_f * in_f + out_f
        for rank in range(WORLD):
            y, x_grad, shard_grad, traffic, kept = out.results[rank][case]
            where = f"Linear({in_f}, {out_f}) on rank {rank}"
            # 1e-5: float32 matmuls of at most 64-wide dot products, same inputs
            assert_close(y, layer(xs[rank]).detach(), atol=1e-5, rtol=1e-5, name=f"forward output of {where}",
                         hint="all-gather the shards into the full flat vector; weight = first out*in "
                              "elements viewed (out, in), bias = the next out elements; y = x W^T + b")
            assert_close(x_grad, xs[rank].grad, atol=1e-5, rtol=1e-5, name=f"input gradient of {where}",
                         hint="grad_x = grad_y @ W (gather W again in backward: only the shard was saved)")
            require(shard_grad is not None, f"{where}: backward must return a gradient for the shard")
            # 1e-5: sums over ranks in another order, of products of float32 values of size ~1
            assert_close(shard_grad, flat_grad[rank * chunk:(rank + 1) * chunk], atol=1e-5, rtol=1e-4,
                         name=f"shard gradient of {where}",
                         hint="flatten (grad_W, grad_b), pad to N x shard size, reduce-scatter, divide by N")
            padded = padded_numel(numel, WORLD)
            ag, rs = traffic.sent(op="all_gather"), traffic.sent(op="reduce_scatter")
            expected = (WORLD - 1) * padded // WORLD * 4
            require(ag == 2 * expected and rs == expected and traffic.sent() == 3 * expected,
                    f"{where} sent all_gather {ag:,.0f} B and reduce_scatter {rs:,.0f} B; ZeRO-3 gathers the "
                    f"parameters twice (forward and backward, {2 * expected:,} B) and reduce-scatters the "
                    f"gradient once ({expected:,} B): 3 Psi")
            shard_bytes = padded_numel(numel, WORLD) // WORLD * 4
            require(kept <= shard_bytes,
                    f"{where} keeps {kept:,} bytes for backward besides x and its shard (the full layer is "
                    f"{numel * 4:,} bytes, one shard {shard_bytes:,})\n  hint: ZeRO-3 saves only the shard "
                    "(ctx.save_for_backward(x, shard)) and gathers W again in backward; a gathered W or b kept on "
                    "ctx, or a view of the gathered vector, keeps the whole layer alive until backward")
    return "Linear(2,1), Linear(5,3), Linear(32,64): output, input grad, shard grad, 3 Psi traffic"
