"""Tests of course.checks.paro: strategy validation, groups, and every check on the notebook's
solution (must pass) and on plausible wrong implementations (must fail)."""

from __future__ import annotations

from pathlib import Path

import pytest
import solution_code

from course import dist
from course.checks import core
from course.checks import paro as check

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "solutions" / "08_paro.ipynb"

PRELUDE = """
import math
import torch
import torch.distributed as tdist
from course import dist
from course.checks import paro as check
"""


def define(source: str) -> dict:
    return solution_code.define(source, PRELUDE)


def solution_source(name: str) -> str:
    return solution_code.solution_source(NOTEBOOK, name)


@pytest.fixture(scope="module")
def solution() -> dict:
    return define(solution_code.code_cells(NOTEBOOK, lambda s: "### BEGIN SOLUTION" in s or "def ring_exchange(" in s))


passed = solution_code.passed


# --- helpers ------------------------------------------------------------------------------------


def test_there_are_ten_ordered_strategies_including_zero():
    assert len(check.STRATEGIES) == 10
    assert {"NNN", "NNG", "NGG", "GGG"} <= set(check.STRATEGIES)


@pytest.mark.parametrize("bad", ["GNN", "NGI", "nng", "NN", 3, "NNX"])
def test_validate_strategy_names_the_problem(bad):
    with pytest.raises(ValueError, match="strategy"):
        check.validate_strategy(bad)


def test_make_groups_builds_two_tiers_on_ranks():
    def groups():
        intra_ranks, inter_ranks, _, _ = check.make_groups(2)
        return intra_ranks, inter_ranks

    out = dist.pool(check.WORLD).run(groups)
    assert out.results == [([0, 1], [0, 2]), ([0, 1], [1, 3]), ([2, 3], [0, 2]), ([2, 3], [1, 3])]


def test_make_groups_reuses_its_groups_instead_of_leaking_them():
    def calls(times):
        import os

        def resources():  # open file descriptors and OS threads (gloo's are not Python threads)
            return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))

        first = check.make_groups(2)
        before = resources()
        for _ in range(times):
            again = check.make_groups(2)
        after = resources()
        return before, after, again[2] is first[2] and again[3] is first[3]

    out = dist.pool(check.WORLD).run(calls, 5)
    for before, after, same in out.results:
        assert same, "make_groups made new groups on a repeated call"
        assert after[0] <= before[0] and after[1] <= before[1], f"(fds, threads) grew from {before} to {after} over 5 calls"


def test_zero_3_collectives_move_three_psi_across_a_flat_cluster():
    # with one group (m = n) nothing is inter-group; GGG gathers twice and reduce-scatters once
    ops = [op for tier, op, size in check._collectives("GGG", 1.0, 4)]
    assert sorted(ops) == ["all_gather", "all_gather", "all_gather", "all_gather", "reduce_scatter",
                           "reduce_scatter"]


# --- checks -------------------------------------------------------------------------------------


def test_paro_memory(solution):
    assert passed(check.paro_memory, solution["paro_memory"])
    everything_global = define("def f(s, psi, n, m, param_bytes=2, grad_bytes=2, k=12):\n"
                               "    check.validate_strategy(s)\n"
                               "    share = {'N': 1, 'I': n, 'G': n}\n"
                               "    return psi * (param_bytes / share[s[0]] + grad_bytes / share[s[1]] + k / share[s[2]])\n")
    assert not passed(check.paro_memory, everything_global["f"])
    no_validation = define(solution_source("paro_memory").replace("    check.validate_strategy(strategy)\n", ""))
    assert not passed(check.paro_memory, no_validation["paro_memory"])


def test_ring_collectives(solution):
    assert passed(check.ring_collectives, solution["ring_reduce_scatter"], solution["ring_all_gather"])
    # keeps its own chunk index instead of its position in the ring: wrong chunk on reordered rings
    off_by_one = dict(solution)
    exec(solution_source("ring_reduce_scatter").replace("return chunks[position]",
                                                        "return chunks[(position + 1) % k]"), off_by_one)
    assert not passed(check.ring_collectives, off_by_one["ring_reduce_scatter"], solution["ring_all_gather"])
    # sends each chunk to the previous rank instead of the next: the ring turns the wrong way
    backwards = dict(solution)
    exec(solution_source("ring_reduce_scatter").replace("ring_exchange(chunks[(position - step - 1) % k], received, ring)",
                                                        "ring_exchange(chunks[(position - step - 1) % k], received, "
                                                        "ring[::-1])"), backwards)
    assert not passed(check.ring_collectives, backwards["ring_reduce_scatter"], solution["ring_all_gather"])


def test_hierarchical_all_reduce(solution):
    assert passed(check.hierarchical_all_reduce, solution["hierarchical_all_reduce"])
    flat = dict(solution)
    exec("def flat(x, intra_ring, inter_ring):\n    ring = [0, 1, 2, 3]\n"
         "    return ring_all_gather(ring_reduce_scatter(x, ring), ring)\n", flat)
    assert not passed(check.hierarchical_all_reduce, flat["flat"])  # right sums, wrong tier split
    assert "1/m" in core.RESULTS[-1].message


def test_paro_collectives(solution):
    assert passed(check.paro_collectives, solution["paro_collectives"])
    gathered_once = define(solution_source("paro_collectives").replace('for _ in ("forward", "backward"):',
                                                                      'for _ in ("forward",):'))
    assert not passed(check.paro_collectives, gathered_once["paro_collectives"])
    flat_all_reduce = define("def f(s, psi, m):\n    check.validate_strategy(s)\n"
                             "    return [('inter', 'all_reduce', psi)]\n")
    assert not passed(check.paro_collectives, flat_all_reduce["f"])


def test_ring_time(solution):
    assert passed(check.ring_time, solution["ring_time"])
    no_latency = define(solution_source("ring_time").replace("(alpha + nbytes / k / beta)", "(nbytes / k / beta)"))
    assert not passed(check.ring_time, no_latency["ring_time"])
    whole_message_per_step = define(solution_source("ring_time").replace("nbytes / k / beta", "nbytes / beta"))
    assert not passed(check.ring_time, whole_message_per_step["ring_time"])


# --- launch layout, NCCL-safe ring steps, buckets --------------------------------------------------


@pytest.mark.parametrize("env, world, want", [({}, 4, 2), ({}, 8, 4), ({}, 1, 1), ({"LOCAL_WORLD_SIZE": "8"}, 16, 8),
                                              ({"LOCAL_WORLD_SIZE": "4"}, 4, 2),  # one machine: emulate two
                                              ({"COURSE_RANKS_PER_MACHINE": "1"}, 4, 1)])
def test_ranks_per_machine_comes_from_the_launch(monkeypatch, env, world, want):
    for key in ("LOCAL_WORLD_SIZE", "COURSE_RANKS_PER_MACHINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert check.ranks_per_machine(world) == want


@pytest.mark.parametrize("value", ["3", "0", "two"])
def test_ranks_per_machine_refuses_a_count_that_does_not_divide_the_world(monkeypatch, value):
    monkeypatch.setenv("COURSE_RANKS_PER_MACHINE", value)
    with pytest.raises(ValueError, match="COURSE_RANKS_PER_MACHINE"):
        check.ranks_per_machine(4)


def test_ring_exchange_posts_send_and_receive_together():
    # an isend followed by a blocking recv to the same peer can hang on NCCL in 2-rank rings
    source = solution_source("ring_exchange")
    assert "batch_isend_irecv" in source and "tdist.recv(" not in source


def test_assign_buckets(solution):
    assert passed(check.assign_buckets, solution["assign_buckets"])
    closes_late = define(solution_source("assign_buckets").replace("if filled >= bucket_bytes:",
                                                                   "if filled > bucket_bytes:"))
    assert not passed(check.assign_buckets, closes_late["assign_buckets"])  # waits past the cap
    drops_last = define(solution_source("assign_buckets").replace("    if current:\n        buckets.append(current)\n", ""))
    assert not passed(check.assign_buckets, drops_last["assign_buckets"])  # loses the last gradients
    no_validation = define(solution_source("assign_buckets").replace(
        'raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")', "pass"))
    assert not passed(check.assign_buckets, no_validation["assign_buckets"])


# --- the notebook's memory claims on CUDA, simulated -----------------------------------------------

SIMULATE_CUDA = '''
def simulate_cuda_rounding(on):
    """MemTracker counting CPU storages with its own CUDA rule (torch's code, with the device type it
    tests swapped to cuda for the call) and measure.allocation_unit saying 512 B; on=False restores both."""
    import torch
    from torch.distributed._tools import mem_tracker
    from course.parallel import measure
    info = mem_tracker._WeakRefInfo
    if on and not hasattr(info, "_course_rule"):
        info._course_rule, measure._course_unit = info._calculate_mem_consumed, measure.allocation_unit

        def as_on_cuda(self):
            real, self.device = self.device, torch.device("cuda")
            try:
                return info._course_rule(self)
            finally:
                self.device = real

        info._calculate_mem_consumed = as_on_cuda
        measure.allocation_unit = lambda device: measure.CUDA_BLOCK_BYTES
    elif not on and hasattr(info, "_course_rule"):
        info._calculate_mem_consumed, measure.allocation_unit = info._course_rule, measure._course_unit
        del info._course_rule, measure._course_unit
    return on
'''


@pytest.mark.slow
def test_the_notebooks_memory_claims_hold_when_the_tracker_rounds_as_on_cuda(capsys):
    # On a GPU MemTracker counts each storage in 512-byte blocks; the claims compared the tracker with
    # the tensors' own bytes and printed False there. Section 5's driver (cells p23, p23o) on the four
    # ranks, with the tracker and the helper both counting as on CUDA:
    import nbformat

    cells = {c.get("id"): c.source for c in nbformat.read(str(NOTEBOOK), as_version=4).cells}
    setup = "\n\n".join(cells[i] for i in ("p01", "p05", "p11", "p14", "p20", "p25", "c03"))  # + exercise solutions
    namespace = solution_code.define(setup + "\n\n" + SIMULATE_CUDA)
    simulate, ranks = namespace["simulate_cuda_rounding"], namespace["ranks"]
    capsys.readouterr()
    try:
        simulate(True)
        assert ranks.run(simulate, True).results == [True] * 4
        exec(compile(cells["p23"] + "\n\n" + cells["p23o"], "<08 p23, p23o>", "exec"), namespace)
    finally:
        ranks.run(simulate, False)  # the pool's ranks serve other tests: restore torch's rule there
        simulate(False)
    printed = capsys.readouterr().out
    rows = namespace["memory_rows"]
    assert all(r["rounding B"] > 0 for r in rows)  # the simulation rounded: nbytes alone would not match
    assert "within 0.1% of the formula (padding; CUDA's 512-byte blocks taken off): True" in printed
    assert "the tracker sees exactly the listed states as allocated, nothing else held: True" in printed
    assert "explain the difference: True" in printed
    zero3 = next(r for r in rows if r["strategy"] == "GGG")
    assert zero3["live B (MemTracker)"] == zero3["on CUDA B"] == 40_960  # = the notebook's computed GPU figure
