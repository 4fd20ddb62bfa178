"""Tensor x data parallelism on a 2-D device mesh (``torch.distributed.device_mesh``).

Four ranks in a 2 x 2 mesh, dimensions ``("dp", "tp")``: ranks {0, 1} and {2, 3} are tensor-parallel
pairs, ranks {0, 2} and {1, 3} data-parallel pairs. A two-layer MLP ``y = W2 relu(W1 x + b1) + b2``
is split Megatron-style inside each tp pair: ``W1`` (and ``b1``) by rows, so each rank computes half
of the hidden units; ``W2`` by columns, so each rank's product is a partial sum that one all-reduce
over tp completes. Each dp pair sees half of the batch and averages its gradients over dp. SGD then
updates every shard; the result equals one process training the whole MLP on the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

from .. import dist

IN, HIDDEN, OUT, BATCH, LR = 8, 16, 4, 16, 0.1
_MESHES: dict = {}  # (world group, shape): the mesh, made once (every mesh makes process groups)


def tp_dp_mesh(dp: int = 2, tp: int = 2):
    """The ``(dp, tp)`` mesh on this rank's device type, made once per process group; its groups are
    labelled ``tp`` and ``dp`` for traffic counts. Every rank must call it."""
    from torch.distributed.device_mesh import init_device_mesh

    world = tdist.get_world_size()
    if dp * tp != world:
        raise ValueError(f"a {dp} x {tp} mesh needs {dp * tp} ranks, but the group has {world}")
    key = (dp, tp)
    cached = _MESHES.get(key)
    if cached is None or cached[0] is not tdist.group.WORLD:
        mesh = init_device_mesh(dist.device().type, (dp, tp), mesh_dim_names=("dp", "tp"))
        dist.name_group(mesh.get_group("tp"), "tp")
        dist.name_group(mesh.get_group("dp"), "dp")
        cached = (tdist.group.WORLD, mesh)
        _MESHES[key] = cached
    return cached[1]


def initial_mlp(seed: int = 0) -> dict:
    """The whole MLP's parameters (W1, b1, W2, b2), from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return {"W1": torch.randn(HIDDEN, IN, generator=g) / IN ** 0.5, "b1": torch.randn(HIDDEN, generator=g) * 0.1,
            "W2": torch.randn(OUT, HIDDEN, generator=g) / HIDDEN ** 0.5, "b2": torch.randn(OUT, generator=g) * 0.1}


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, IN, generator=g), torch.randn(BATCH, OUT, generator=g)


def forward(p: dict, x: torch.Tensor, tp_group=None) -> torch.Tensor:
    """The MLP; with ``tp_group``, ``p`` holds this rank's shards and the partial sums are all-reduced."""
    partial = torch.relu(x @ p["W1"].T + p["b1"]) @ p["W2"].T
    if tp_group is not None:
        partial = _SumOverTP.apply(partial, tp_group)
    return partial + p["b2"]


class _SumOverTP(torch.autograd.Function):
    """All-reduce the partial products in forward; in backward every tp rank already holds the whole
    output gradient (the loss is computed identically on each), so it passes through unchanged."""

    @staticmethod
    def forward(ctx, partial, group):
        total = partial.clone()
        tdist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def shard(full: dict, tp_rank: int, tp: int) -> dict:
    """This tp rank's shards: rows of W1 and b1, columns of W2; b2 is replicated."""
    return {"W1": full["W1"].chunk(tp, 0)[tp_rank].clone(), "b1": full["b1"].chunk(tp)[tp_rank].clone(),
            "W2": full["W2"].chunk(tp, 1)[tp_rank].clone(), "b2": full["b2"].clone()}


def train_one_process(steps: int = 3) -> dict:
    """The reference: SGD on the whole batch in one process."""
    p = {k: v.requires_grad_() for k, v in initial_mlp().items()}
    for step in range(steps):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(forward(p, x), y)
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for v, g in zip(p.values(), grads):
                v -= LR * g
    return {k: v.detach() for k, v in p.items()}


def train_tp_dp(steps: int = 3, tp: int = 2) -> tuple[dict, dict]:
    """On each rank of a (world / tp) x tp mesh: train, then return the whole parameters (gathered over
    tp) and the bytes this rank sent per mesh dimension."""
    world = tdist.get_world_size()
    if world % tp or HIDDEN % tp or BATCH % (world // tp):
        raise ValueError(f"tp={tp} must divide the {world} ranks and the {HIDDEN} hidden units, and the data-parallel "
                         f"size {world // max(tp, 1)} the batch of {BATCH}")
    mesh = tp_dp_mesh(world // tp, tp)
    tp_group, dp_group = mesh.get_group("tp"), mesh.get_group("dp")
    tp_rank, tp, dp_rank, dp = (mesh.get_local_rank("tp"), mesh.size(1), mesh.get_local_rank("dp"), mesh.size(0))
    device = dist.device()
    p = {k: v.to(device).requires_grad_() for k, v in shard(initial_mlp(), tp_rank, tp).items()}
    with dist.measure() as traffic:
        for step in range(steps):
            x, y = (t.to(device).chunk(dp)[dp_rank] for t in batch(step))  # my dp slice of the batch
            loss = torch.nn.functional.mse_loss(forward(p, x, tp_group), y)
            grads = torch.autograd.grad(loss, list(p.values()))
            with torch.no_grad():
                for v, g in zip(p.values(), grads):
                    tdist.all_reduce(g, group=dp_group)  # equal slices: the mean of the means
                    v -= LR * g / dp
    whole = {}
    for name, dim in (("W1", 0), ("b1", 0), ("W2", 1)):
        parts = [torch.empty_like(p[name]) for _ in range(tp)]
        tdist.all_gather(parts, p[name].detach().contiguous(), group=tp_group)
        whole[name] = torch.cat(parts, dim).cpu()
    whole["b2"] = p["b2"].detach().cpu()
    # by each group's own label: a dimension that spans every rank (dp = 1) is the default group, "world"
    sent = {"tp": traffic.sent(group=dist.group_label(tp_group)), "dp": traffic.sent(group=dist.group_label(dp_group))}
    return whole, sent


def ring_model_bytes(steps: int, dp: int, tp: int) -> dict:
    """Bytes a rank sends per mesh dimension under the ring model: an all-reduce of the (batch/dp) x OUT
    partial products over tp per step; an all-reduce of this rank's gradient shards over dp per step."""
    shard = HIDDEN // tp * IN + HIDDEN // tp + OUT * HIDDEN // tp + OUT
    return {"tp": steps * 2 * (tp - 1) / tp * BATCH // dp * OUT * 4, "dp": steps * 2 * (dp - 1) / dp * shard * 4}


def max_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"different parameters: {sorted(a)} vs {sorted(b)}")
    return max((a[k] - b[k]).abs().max().item() for k in a)
