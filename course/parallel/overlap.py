"""Data parallelism whose gradient all-reduces overlap the backward pass (bucketed DDP).

Backward produces gradients from the last layer to the first. Instead of waiting for all of them
and then all-reducing, :class:`BucketedDDP` groups parameters into buckets of about ``bucket_bytes``
in the order their gradients appear, and as soon as a bucket's last gradient is accumulated (a
``register_post_accumulate_grad_hook``) it flattens the bucket and starts an asynchronous
all-reduce. The communication of the late layers' buckets then runs while backward computes the
early layers; :meth:`BucketedDDP.finish` waits for the handles before the optimizer step and
records when each bucket was launched and whether it had completed when backward ended.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as tdist

from .. import dist


def assign_buckets(sizes: list[int], bucket_bytes: int) -> list[list[int]]:
    """Split indices 0..len(sizes)-1, in order, into consecutive buckets: a bucket closes as soon as
    its bytes reach ``bucket_bytes`` (the last one may hold less). ``sizes`` are bytes per tensor."""
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes):
        raise ValueError(f"sizes must be byte counts (ints >= 0), got {sizes!r}")
    buckets, current, filled = [], [], 0
    for index, size in enumerate(sizes):
        current.append(index)
        filled += size
        if filled >= bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
    if current:
        buckets.append(current)
    return buckets


class BucketedDDP:
    """Average ``model``'s gradients over ``group`` in buckets, each launched when it is ready."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int, group=None, assign=assign_buckets):
        params = [p for p in model.parameters() if p.requires_grad]
        self.order = params[::-1]  # the order backward produces gradients in, roughly: last layer first
        buckets = assign([p.numel() * p.element_size() for p in self.order], bucket_bytes)
        if sorted(i for b in buckets for i in b) != list(range(len(self.order))):
            raise ValueError(f"assign must put each of the {len(self.order)} parameters in exactly one bucket, "
                             f"got {buckets}")
        self.buckets = [[self.order[i] for i in b] for b in buckets]
        self.bucket_of = {id(p): k for k, b in enumerate(self.buckets) for p in b}
        self.group, self.size = group, tdist.get_world_size(group)
        self.hooks = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]
        self._reset()

    def _reset(self):
        self.missing = [len(b) for b in self.buckets]
        self.in_flight, self.launched_at = [], []

    def _grad_ready(self, param: torch.Tensor) -> None:
        k = self.bucket_of[id(param)]
        self.missing[k] -= 1
        if self.missing[k] == 0:  # the bucket's last gradient: send it now, keep computing
            flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[k]])
            self.launched_at.append(time.perf_counter())
            self.in_flight.append((k, flat, tdist.all_reduce(flat, group=self.group, async_op=True)))

    def finish(self) -> dict:
        """After ``loss.backward()``: wait for every bucket, write the averaged gradients back; returns
        the timing of this step (seconds, on this rank's clock)."""
        dist.synchronize()
        backward_end = time.perf_counter()
        done_by_backward_end = sum(work.is_completed() for _, _, work in self.in_flight)
        if len(self.in_flight) != len(self.buckets):
            raise RuntimeError(f"{len(self.in_flight)} of {len(self.buckets)} buckets were launched: a parameter "
                               "received no gradient (unused in the forward pass?)")
        for k, flat, work in self.in_flight:
            work.wait()
            flat /= self.size
            offset = 0
            for p in self.buckets[k]:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        dist.synchronize()
        waited = time.perf_counter() - backward_end
        timing = {"launches before backward end": sum(t <= backward_end for t in self.launched_at),
                  "buckets": len(self.buckets), "complete at backward end": done_by_backward_end,
                  "first launch to backward end s": backward_end - min(self.launched_at), "wait after backward s": waited}
        self._reset()
        return timing


def plain_ddp_average(model: torch.nn.Module, group=None) -> float:
    """The baseline: after backward, all-reduce every gradient in turn; returns the seconds it took."""
    dist.synchronize()
    start = time.perf_counter()
    n = tdist.get_world_size(group)
    for p in model.parameters():
        tdist.all_reduce(p.grad, group=group)
        p.grad /= n
    dist.synchronize()
    return time.perf_counter() - start


def deep_mlp(depth: int = 8, width: int = 256, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers)


def compare(bucket_bytes: int = 1 << 18, depth: int = 8, width: int = 256, batch: int = 64, steps: int = 3,
            assign=assign_buckets) -> dict:
    """On each rank: one backward with bucketed DDP and one with the plain baseline on the same model
    and data, ``steps`` times; returns the largest gradient difference and both timings per step."""
    device, rank = dist.device(), tdist.get_rank()
    bucketed, plain = deep_mlp(depth, width).to(device), deep_mlp(depth, width).to(device)
    ddp = BucketedDDP(bucketed, bucket_bytes, assign=assign)
    difference, timings, plain_seconds = 0.0, [], []
    for step in range(steps):
        g = torch.Generator().manual_seed(10 * step + rank)
        x = torch.randn(batch, width, generator=g).to(device)
        for model in (bucketed, plain):
            model.zero_grad(set_to_none=True)
        bucketed(x).square().mean().backward()
        timings.append(ddp.finish())
        plain(x).square().mean().backward()
        plain_seconds.append(plain_ddp_average(plain))
        difference = max(difference, max((a.grad - b.grad).abs().max().item()
                                         for a, b in zip(bucketed.parameters(), plain.parameters())))
    for hook in ddp.hooks:
        hook.remove()
    return {"max |bucketed - plain|": difference, "timings": timings, "plain all-reduce s": plain_seconds,
            "bucket params": [len(b) for b in ddp.buckets]}


def exposed_communication(results: list[dict], warmup: int = 1) -> dict:
    """The communication still exposed after backward, from :func:`compare`'s per-rank results.

    ``"bucketed ms"`` (waited after backward) and ``"plain ms"`` (all-reduces after backward) are lists
    per rank of one value per repeat, the first ``warmup`` steps left out (first calls set up
    connections and buffers); ``"ratios"`` is bucketed / plain for every (rank, repeat) pair;
    ``"done at backward end"`` how many buckets had completed when backward returned, per rank and repeat.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not results:
        raise ValueError("results must hold one compare() result per rank, got none")
    steps = {len(r["timings"]) for r in results} | {len(r["plain all-reduce s"]) for r in results}
    if len(steps) != 1 or min(steps) <= warmup:
        raise ValueError(f"every rank must have the same number of steps, more than warmup={warmup}; got {sorted(steps)}")
    bucketed = [[1e3 * t["wait after backward s"] for t in r["timings"][warmup:]] for r in results]
    plain = [[1e3 * s for s in r["plain all-reduce s"][warmup:]] for r in results]
    done = [[t["complete at backward end"] for t in r["timings"][warmup:]] for r in results]
    ratios = [b / p for rank_b, rank_p in zip(bucketed, plain) for b, p in zip(rank_b, rank_p)]
    return {"bucketed ms": bucketed, "plain ms": plain, "ratios": ratios, "done at backward end": done,
            "repeats": len(bucketed[0])}
