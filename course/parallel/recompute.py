"""Activation recomputation (``torch.utils.checkpoint``): memory for time, measured.

Backward needs the activations forward computed. Kept, they cost memory proportional to depth x
batch x width; with checkpointing a block keeps only its input and recomputes its inside during
backward, paying about one more forward pass. :func:`measure` runs forward and backward on a
stack of MLP blocks both ways and reports, from ``MemTracker``, the bytes still alive when forward
has finished (what is saved for backward) and the peak during forward and backward, besides the
time and the largest gradient difference.
"""

from __future__ import annotations

import time

import torch
from torch.utils.checkpoint import checkpoint

from . import measure as instruments


class Block(torch.nn.Module):
    """x + W2 gelu(W1 x): a residual MLP block, 4x wide inside."""

    def __init__(self, width: int):
        super().__init__()
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


def stack(depth: int = 6, width: int = 64, seed: int = 0) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    return torch.nn.ModuleList(Block(width) for _ in range(depth))


def forward(blocks, x, recompute: bool):
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
    return x


def measure(depth: int = 6, width: int = 64, batch: int = 256, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Both ways on the same model and input: bytes saved for backward when forward ends, peak bytes
    above the parameters, gradients and input during forward and backward, median time."""
    if min(depth, width, batch, repeats) < 1:
        raise ValueError("depth, width, batch and repeats must be >= 1")
    blocks = stack(depth, width, seed)
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(1000 + seed))
    rows, grads = [], {}
    for recompute in (False, True):
        blocks.zero_grad(set_to_none=True)
        for p in blocks.parameters():  # gradients allocated up front, so the peak below is activations
            p.grad = torch.zeros_like(p)
        with instruments.tracked(x.device) as mem:
            with torch.no_grad():  # let the tracker see what exists already (it counts tensors it sees)
                for t in [x, *blocks.parameters(), *(p.grad for p in blocks.parameters())]:
                    t.add_(0)
            resident = mem.live_bytes()  # parameters, gradients, input: not activations
            mem.reset_peak()
            out = forward(blocks, x, recompute)
            saved = mem.live_bytes() - resident - instruments.tracked_bytes(out)  # as the tracker counts `out`
            out.square().mean().backward()
            del out
            peak = mem.peak_bytes() - resident
        grads[recompute] = [p.grad.clone() for p in blocks.parameters()]
        forward(blocks, x, recompute).square().mean().backward()  # warm-up, untimed
        times, cpu = [], []
        for _ in range(repeats):  # wall time, and this process's CPU time (less disturbed by a busy machine)
            start, start_cpu = time.perf_counter(), time.process_time()
            forward(blocks, x, recompute).square().mean().backward()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        rows.append({"recompute": recompute, "saved for backward B": saved, "peak B": peak,
                     "median ms": 1e3 * sorted(times)[repeats // 2], "median CPU ms": 1e3 * sorted(cpu)[repeats // 2]})
    difference = max((a - b).abs().max().item() for a, b in zip(grads[False], grads[True]))
    for row in rows:
        row["max |grad - grad without recompute|"] = difference
    return rows
