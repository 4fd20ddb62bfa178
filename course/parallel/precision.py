"""Mixed-precision model states in the ZeRO accounting, measured on the tensors.

Mixed-precision Adam keeps bf16 weights (2 bytes a parameter) for the forward and backward pass,
bf16 gradients (2), and in fp32 a master copy of the weights, the momentum and the variance
(4 + 4 + 4 = K = 12): 16 bytes a parameter, the paper's 2 + 2 + K. ZeRO stage s partitions the
optimizer states (s >= 1), the gradients (s >= 2) and the weights (s = 3) over n ranks.

:func:`rank_states` makes exactly the tensors one rank keeps, by running a real mixed-precision
step (bf16 forward and backward, Adam on the fp32 master, the master cast back), and
:func:`measured_bytes` counts them with ``MemTracker``; neither uses the formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist
from . import measure

STAGES = {0: "DP", 1: "ZeRO-1", 2: "ZeRO-2", 3: "ZeRO-3"}


def formula_bytes(psi: int, n: int, stage: int, k: int = 12) -> float:
    """Bytes per rank: Psi (2/s_P + 2/s_G + K/s_OS) with s = n for the partitioned states."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    return psi * (2 / (n if stage >= 3 else 1) + 2 / (n if stage >= 2 else 1) + k / (n if stage >= 1 else 1))


def _mine(flat: torch.Tensor, n: int, rank: int, partitioned: bool) -> torch.Tensor:
    return flat.chunk(n)[rank] if partitioned else flat


def rank_states(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, rank: int, stage: int,
                lr: float = 1e-3) -> dict:
    """One mixed-precision Adam step as rank ``rank`` of ``n`` in ZeRO ``stage`` would keep it.

    Returns the kept tensors: ``weights`` (bf16, full or this rank's part), ``grads`` (bf16),
    ``master``, ``m``, ``v`` (fp32, full or this rank's part). On one process the other ranks'
    gradients are not summed in (the partitions are cut from this rank's own gradient).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if not 0 <= rank < n:
        raise ValueError(f"rank must be in [0, {n}), got {rank}")
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    pad = -numel % n
    full = F.pad(torch.cat([p.detach().reshape(-1) for p in params]), (0, pad))
    master = _mine(full, n, rank, stage >= 1).float().clone()
    m, v = torch.zeros_like(master), torch.zeros_like(master)
    bf16 = [p.detach().to(torch.bfloat16).requires_grad_() for p in params]  # the compute copy
    out = x.to(torch.bfloat16)
    for i in range(0, len(bf16), 2):  # Linear layers (weight, bias), ReLU between
        out = out @ bf16[i].T + bf16[i + 1]
        out = torch.relu(out) if i + 2 < len(bf16) else out
    F.mse_loss(out.float(), y).backward()
    grad_full = F.pad(torch.cat([p.grad.reshape(-1) for p in bf16]), (0, pad))
    grads = _mine(grad_full, n, rank, stage >= 2).clone()
    del grad_full
    grad = _mine(grads, n, rank, stage < 2 and stage >= 1).float()  # the optimizer's part, in fp32
    m.mul_(0.9).add_(grad, alpha=0.1)
    v.mul_(0.999).addcmul_(grad, grad, value=0.001)
    master -= lr * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
    del grad
    weights = master.to(torch.bfloat16) if stage >= 3 else F.pad(
        torch.cat([p.detach().reshape(-1) for p in bf16]), (0, pad))  # stage < 3: all-gathered in reality
    if stage < 3 and stage >= 1:  # write this rank's updated part into the full bf16 weights
        weights.chunk(n)[rank].copy_(master)
    elif stage == 0:
        weights.copy_(master)
    for p in bf16:
        p.grad = None
    return {"weights": weights, "grads": grads, "master": master, "m": m, "v": v}


def measured_bytes(make_model, make_batch, n: int, rank: int, stage: int, device=None) -> dict:
    """Bytes of the states :func:`rank_states` keeps, counted by ``MemTracker`` (what is alive after the
    step) and per kind from the tensors' storages. The model and batch are made inside the tracked
    region (the tracker also counts tensors that existed before but are read inside) and dropped
    before counting: the fp32 model only initialises the states.

    ``device`` is where ``make_model`` and ``make_batch`` put their tensors (default: this rank's,
    :func:`course.dist.device`). Per kind the bytes are the tensors' own (``nbytes``); ``"allocated"`` is
    what the tracker should count for them on that device (:func:`measure.tracked_bytes`: the same on
    the CPU, each storage rounded up to 512 B on CUDA), which is what ``"live"`` is compared with."""
    device = dist.device() if device is None else torch.device(device)
    with measure.tracked(device) as mem:
        model = make_model()
        x, y = make_batch()
        states = rank_states(model, x, y, n, rank, stage)
        del model, x, y
        live = mem.live_bytes()
    per_kind = {name: measure.storage_bytes(t) for name, t in states.items()}
    return {"live": live, "allocated": measure.tracked_bytes(states), **per_kind}
