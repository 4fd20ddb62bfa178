"""Checks for notebook 08 (PaRO): memory and communication of partial-redundancy strategies, a
ring all-reduce from send/recv and its hierarchical variant on two-level groups.

The cluster is 4 ranks in 2 groups of 2: ``intra0`` = {0, 1}, ``intra1`` = {2, 3} (fast links),
``inter0`` = {0, 2}, ``inter1`` = {1, 3} (the ranks with the same local index, slow links).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter

import torch
import torch.distributed as tdist

from .. import dist
from .core import CheckFailed, assert_close, check, require
from .ranks import on_ranks

WORLD, GROUP = 4, 2  # 4 ranks, groups of m = 2
LEVELS = "NIG"  # not partitioned, partitioned within a group, partitioned globally
STRATEGIES = ["".join(s) for s in itertools.product(LEVELS, repeat=3)
              if LEVELS.index(s[0]) <= LEVELS.index(s[1]) <= LEVELS.index(s[2])]
ZERO_NAMES = {"NNN": "DP", "NNG": "ZeRO-1", "NGG": "ZeRO-2", "GGG": "ZeRO-3"}


def validate_strategy(strategy) -> str:
    """``strategy`` as 3 letters (params, grads, optimizer states), each N, I or G, none finer than the next."""
    if not isinstance(strategy, str) or len(strategy) != 3 or any(c not in LEVELS for c in strategy):
        raise ValueError(f"strategy must be 3 letters from N, I, G (params, gradients, optimizer states), "
                         f"got {strategy!r}")
    if not LEVELS.index(strategy[0]) <= LEVELS.index(strategy[1]) <= LEVELS.index(strategy[2]):
        raise ValueError(f"strategy {strategy}: parameters may not be partitioned more finely than gradients, nor "
                         "gradients than optimizer states (order N < I < G)")
    return strategy




def ranks_per_machine(world: int) -> int:
    """m, the ranks per machine (group), from the launch, validated.

    Under torchrun on several machines it is ``LOCAL_WORLD_SIZE`` (the ranks torchrun started on
    this machine). On one machine (local ranks, or torchrun with one node) two machines are emulated,
    m = world / 2 (m = 1 for one rank); ``COURSE_RANKS_PER_MACHINE`` overrides both.
    """
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive number of ranks, got {world!r}")
    override = os.environ.get("COURSE_RANKS_PER_MACHINE")
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if override:
        m, source = override, "COURSE_RANKS_PER_MACHINE"
    elif local and int(local) < world:  # torchrun on several machines: a machine is what it started here
        m, source = local, "LOCAL_WORLD_SIZE (torchrun)"
    else:
        m, source = (world // 2 if world % 2 == 0 else world), f"the default for {world} ranks on one machine"
    try:
        m = int(m)
    except ValueError:
        raise ValueError(f"{source} must be a whole number of ranks per machine, got {m!r}") from None
    if m < 1 or world % m:
        raise ValueError(f"ranks per machine m={m} (from {source}) must be at least 1 and divide the world size "
                         f"{world}, so that every machine holds the same number of ranks")
    return m


_GROUPS: dict = {}  # (world size, m) -> (the default group they belong to, make_groups' result)


def make_groups(m: int = GROUP):
    """On a rank: create every intra- and inter-group (all ranks must call this, in the same order).

    Returns ``(intra_ranks, inter_ranks, intra_group, inter_group)`` for this rank; the ranks lists
    are in ring order. The groups are made once per process group and m, then reused: each new
    group costs every rank sockets and threads, and checks and cells call this many times.
    """
    rank, world = tdist.get_rank(), tdist.get_world_size()
    if world % m:
        raise ValueError(f"group size m={m} must divide the world size {world}")
    cached = _GROUPS.get((world, m))
    if cached is None or cached[0] is not tdist.group.WORLD:  # none yet, or from a group since destroyed
        cached = (tdist.group.WORLD, _make_groups(rank, world, m))
        _GROUPS[(world, m)] = cached
    intra_ranks, inter_ranks, intra, inter = cached[1]
    return list(intra_ranks), list(inter_ranks), intra, inter  # copies: a caller may reorder its ring


def _make_groups(rank: int, world: int, m: int):
    mine = {}
    for g in range(world // m):
        ranks = list(range(g * m, (g + 1) * m))
        group = dist.new_group(ranks, label=f"intra{g}")
        if rank in ranks:
            mine["intra"] = (ranks, group)
    for local in range(m):
        ranks = list(range(local, world, m))
        group = dist.new_group(ranks, label=f"inter{local}")
        if rank in ranks:
            mine["inter"] = (ranks, group)
    return mine["intra"][0], mine["inter"][0], mine["intra"][1], mine["inter"][1]


def same_group(a: int, b: int, m: int = GROUP) -> bool:
    return a // m == b // m


# --- 8.1 memory --------------------------------------------------------------------------------


def _memory(strategy, psi, n, m, param_bytes=2, grad_bytes=2, k=12):
    validate_strategy(strategy)
    share = {"N": 1, "I": m, "G": n}
    return psi * (param_bytes / share[strategy[0]] + grad_bytes / share[strategy[1]] + k / share[strategy[2]])


@check
def paro_memory(fn):
    """``fn(strategy, psi, n, m, param_bytes=2, grad_bytes=2, k=12)``: model-state bytes per rank."""
    for strategy in STRATEGIES:
        for psi, n, m in ((1, 1, 1), (8, 4, 2), (7e9, 32, 8)):
            got = fn(strategy, psi, n, m)
            # 1e-9 relative: a closed form; only float rounding may differ
            require(isinstance(got, (int, float)) and math.isclose(got, _memory(strategy, psi, n, m), rel_tol=1e-9),
                    f"fn({strategy!r}, psi={psi:g}, n={n}, m={m}) returned {got!r}, expected "
                    f"{_memory(strategy, psi, n, m):g}\n  hint: each state divides by 1 (N), m (I) or n (G)")
    got = fn("IIG", 1000, 8, 4, param_bytes=4, grad_bytes=4, k=8)
    require(math.isclose(got, _memory("IIG", 1000, 8, 4, 4, 4, 8), rel_tol=1e-12),
            "use the param_bytes, grad_bytes and k arguments (fp32 Adam: 4, 4, 8)")
    for bad in ("GNN", "NXG", "NN"):
        try:
            fn(bad, 10, 4, 2)
        except ValueError:
            continue
        raise CheckFailed(f"fn({bad!r}, ...) should raise ValueError (use check.validate_strategy)")
    return f"all {len(STRATEGIES)} strategies at 3 sizes, byte sizes, 3 invalid strategies"


# --- 8.2 and 8.3: ring collectives from send/recv -------------------------------------------------


def _rank_ring(ring_reduce_scatter, ring_all_gather, sizes):
    rank = tdist.get_rank()
    results = []
    for ring, numel in sizes:
        if rank not in ring:
            results.append(None)
            continue
        k = len(ring)
        x = torch.arange(numel, dtype=torch.float32, device=dist.device()) * (rank + 1) + rank
        with dist.measure() as rs_traffic:
            chunk = ring_reduce_scatter(x.clone(), ring)
        with dist.measure() as ag_traffic:
            full = ring_all_gather(chunk.clone(), ring)
        results.append((chunk.cpu(), full.cpu(), rs_traffic, ag_traffic, k))  # CPU: the checker may have no GPU
    return results


RING_CASES = [([0, 1], 2), ([0, 1, 2, 3], 4), ([0, 1, 2, 3], 12), ([1, 3], 6), ([3, 2, 1, 0], 8)]


def _ring_expected(ring, numel):
    total = sum(torch.arange(numel, dtype=torch.float32) * (r + 1) + r for r in ring)
    return total


@check
def ring_collectives(ring_reduce_scatter, ring_all_gather):
    """Ring reduce-scatter and all-gather from isend/recv: results, and exactly (k-1)/k of the data sent."""
    out = on_ranks(_rank_ring, ring_reduce_scatter, ring_all_gather, RING_CASES)
    for case, (ring, numel) in enumerate(RING_CASES):
        total = _ring_expected(ring, numel)
        k = len(ring)
        for rank in ring:
            chunk, full, rs, ag, _ = out.results[rank][case]
            position = ring.index(rank)
            where = f"ring {ring}, {numel} elements, rank {rank} (position {position})"
            # exact: sums of at most 4 small integers in float32
            assert_close(chunk, total.chunk(k)[position], atol=0, rtol=0, name=f"reduce-scatter on {where}",
                         hint="after k-1 steps the rank at position i holds the full sum of chunk i: in step s "
                              "send chunk (i - s - 1) mod k to the next rank and add the received chunk (i - s - 2) "
                              "mod k to your own")
            assert_close(full, total, atol=0, rtol=0, name=f"all-gather on {where}",
                         hint="in step s send chunk (i - s) mod k onward and store the received (i - s - 1) mod k")
            size = numel // k * 4
            for name, traffic in (("reduce-scatter", rs), ("all-gather", ag)):
                sent = traffic.sent(op={"send", "isend"})
                require(sent == (k - 1) * size and traffic.sent() == sent,
                        f"{name} on {where} sent {traffic.sent():,.0f} bytes; a ring sends k-1 = {k - 1} chunks of "
                        f"{size} bytes, with send/isend only")
                nxt = ring[(position + 1) % k]
                require(traffic.sent(peer=nxt) == sent,
                        f"{name} on {where}: every chunk must go to the next rank in the ring ({nxt})")
    return f"{len(RING_CASES)} rings (2 and 4 ranks, any order): sums exact, (k-1) chunks sent to the next rank"


def _rank_hierarchical(hierarchical_all_reduce, numel):
    rank = tdist.get_rank()
    intra_ranks, inter_ranks, _, _ = make_groups(GROUP)
    x = torch.arange(numel, dtype=torch.float32, device=dist.device()) * (rank + 1) - rank
    with dist.measure() as traffic:
        y = hierarchical_all_reduce(x.clone(), intra_ranks, inter_ranks).cpu()
    intra = sum(e[1] for (op, g, peer), e in traffic.counts.items() if peer is not None and same_group(rank, peer))
    inter = sum(e[1] for (op, g, peer), e in traffic.counts.items() if peer is not None and not same_group(rank, peer))
    return y, intra, inter, traffic.sent()


@check
def hierarchical_all_reduce(fn):
    """``fn(x, intra_ring, inter_ring)``: intra reduce-scatter, inter all-reduce of the chunk, intra all-gather."""
    for numel in (4, 16):
        out = on_ranks(_rank_hierarchical, fn, numel)
        total = sum(torch.arange(numel, dtype=torch.float32) * (r + 1) - r for r in range(WORLD))
        m, groups = GROUP, WORLD // GROUP
        for rank, (y, intra, inter, sent) in enumerate(out.results):
            # exact: integer-valued float32 sums
            assert_close(y, total, atol=0, rtol=0, name=f"hierarchical all-reduce of {numel} elements on rank {rank}")
            elem = 4 * numel
            want_intra = 2 * (m - 1) / m * elem  # reduce-scatter + all-gather inside the group
            want_inter = 2 * (groups - 1) / groups * elem / m  # all-reduce of one 1/m chunk across groups
            require(sent == intra + inter, f"rank {rank}: use send/isend only (sent {sent:,.0f} bytes in all, "
                                           f"{intra + inter:,.0f} point-to-point)")
            require(intra == want_intra and inter == want_inter,
                    f"rank {rank} sent {intra:,.0f} B inside its group and {inter:,.0f} B to other groups; expected "
                    f"{want_intra:,.0f} and {want_inter:,.0f}\n  hint: only the reduce-scattered chunk (1/m of the "
                    "data) may cross groups: ring_reduce_scatter(x, intra_ring), ring all-reduce of that chunk over "
                    "inter_ring, then ring_all_gather over intra_ring")
    return "4 and 16 elements on 2 groups of 2: exact sums; 2(m-1)/m inside groups, 2(g-1)/g / m across"


# --- 8.4 the collectives of a strategy ------------------------------------------------------------


def _collectives(strategy, psi, m):
    validate_strategy(strategy)
    p, g, o = strategy
    steps = []
    for _ in ("forward", "backward"):  # partitioned parameters are gathered for each pass, freed after
        if p == "G":
            steps.append(("inter", "all_gather", psi / m))
        if p in "IG":
            steps.append(("intra", "all_gather", psi))
    steps.append(("intra", "reduce_scatter", psi))
    if g == "N":
        steps += [("inter", "all_reduce", psi / m), ("intra", "all_gather", psi)]
    elif g == "I":
        steps.append(("inter", "all_reduce", psi / m))
    else:
        steps.append(("inter", "reduce_scatter", psi / m))
    if o == "G" and p in "NI":
        steps.append(("inter", "all_gather", psi / m))
    if o in "IG" and p == "N":
        steps.append(("intra", "all_gather", psi))
    return steps


def _normalise(steps):
    return Counter((tier, op, round(float(size), 6)) for tier, op, size in steps)


@check
def paro_collectives(fn):
    """``fn(strategy, psi, m)``: the hierarchical collectives of one training step (tier, op, elements)."""
    for strategy in ["NNN", "NNG", "NGG", "GGG"] + [s for s in STRATEGIES if s not in ZERO_NAMES]:
        for psi, m in ((8, 2), (24, 4)):
            got = fn(strategy, psi, m)
            require(isinstance(got, list) and all(isinstance(s, tuple) and len(s) == 3 for s in got),
                    f"fn({strategy!r}, {psi}, {m}) should return a list of (tier, op, elements), got {got!r}"[:300])
            want = _collectives(strategy, psi, m)
            if _normalise(got) != _normalise(want):
                missing = _normalise(want) - _normalise(got)
                extra = _normalise(got) - _normalise(want)
                name = ZERO_NAMES.get(strategy, strategy)
                raise CheckFailed(f"{strategy} ({name}), psi={psi}, m={m}: missing {sorted(missing.elements())}, "
                                  f"unexpected {sorted(extra.elements())}\n  hint: (1) gather the parameters up to "
                                  "full size if they are partitioned, once for the forward and once for the backward "
                                  "pass; (2) reduce-scatter the gradient in the group, "
                                  "then across groups all-reduce (N, I) or reduce-scatter (G) the 1/m chunk, and "
                                  "all-gather in the group for N; (3) gather the updated optimizer partition back to "
                                  "the parameters' level")
    try:
        fn("GNN", 8, 2)
    except ValueError:
        pass
    else:
        raise CheckFailed("fn('GNN', ...) should raise ValueError (check.validate_strategy)")
    return f"all {len(STRATEGIES)} strategies, 2 sizes each, and an invalid strategy"


# --- 8.5 the alpha-beta time of a ring collective -------------------------------------------------


def _ring_time(op, k, nbytes, alpha, beta):
    if op not in ("all_reduce", "reduce_scatter", "all_gather"):
        raise ValueError(f"op must be all_reduce, reduce_scatter or all_gather, got {op!r}")
    if k == 1:
        return 0.0
    steps = 2 * (k - 1) if op == "all_reduce" else k - 1
    return steps * (alpha + nbytes / k / beta)


@check
def ring_time(fn):
    """``fn(op, k, nbytes, alpha, beta)``: seconds of a ring collective over k ranks, alpha-beta model."""
    cases = [("all_gather", 1, 100, 1e-5, 1e9), ("all_gather", 2, 100, 0.0, 1.0), ("reduce_scatter", 4, 400, 1.0, 1e9),
             ("all_reduce", 4, 4e9, 5e-6, 25e9), ("all_reduce", 8, 1e9, 1e-5, 300e9), ("all_gather", 64, 2e9, 2e-5, 25e9)]
    for op, k, nbytes, alpha, beta in cases:
        got = fn(op, k, nbytes, alpha, beta)
        want = _ring_time(op, k, nbytes, alpha, beta)
        # 1e-9 relative: closed form
        require(isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15),
                f"fn({op!r}, k={k}, nbytes={nbytes:g}, alpha={alpha:g}, beta={beta:g}) = {got!r}, expected {want:.6g}"
                "\n  hint: a ring takes k-1 steps (2(k-1) for all-reduce); each sends nbytes/k and costs alpha + "
                "(nbytes/k)/beta; one rank alone costs 0")
    try:
        fn("broadcast", 4, 10, 0, 1)
    except ValueError:
        pass
    else:
        raise CheckFailed("fn('broadcast', ...) should raise ValueError: only the three ring collectives are modelled")
    return "6 cases incl. k = 1 and latency-only, and an unknown op"


# --- 8.6 buckets for overlapping gradient all-reduces with backward ----------------------------------

BUCKET_CASES = [([4, 4, 4, 4], 8), ([10, 1, 1], 8), ([3, 3, 3], 100), ([5, 5, 5], 1), ([2, 0, 6, 0, 3], 8),
                ([], 16), ([262_144, 1_024, 262_144, 1_024], 262_144), ([7, 1, 8], 8)]


@check
def assign_buckets(fn):
    """``fn(sizes, bucket_bytes)``: consecutive buckets of indices, each closed when its bytes reach the cap."""
    from ..parallel.overlap import assign_buckets as reference

    for sizes, cap in BUCKET_CASES:
        got = fn(list(sizes), cap)
        want = reference(list(sizes), cap)
        require(isinstance(got, list) and all(isinstance(b, list) for b in got),
                f"fn({sizes}, {cap}) should return a list of lists of indices, got {got!r}"[:300])
        require(got == want,
                f"fn({sizes}, bucket_bytes={cap}) returned {got}, expected {want}\n  hint: walk the sizes in order; "
                "add each index to the open bucket and close the bucket as soon as its bytes reach bucket_bytes "
                "(>=); a last, partly filled bucket is kept; no empty buckets")
    for bad in (0, -8, 2.5):
        try:
            fn([4, 4], bad)
        except ValueError:
            continue
        raise CheckFailed(f"fn([4, 4], {bad!r}) should raise ValueError: bucket_bytes must be a positive int")
    return f"{len(BUCKET_CASES)} cases (exact fill, overflow, one bucket, one per tensor, zero-size, empty), bad caps"
