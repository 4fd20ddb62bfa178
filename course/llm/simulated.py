"""Simulated coding models that make mistakes at stated rates, and the agent loops measured with them.

A scripted stand-in that stores which task it solves decides the outcome of every comparison made
with it. The models here do not: on each HumanEval problem a :class:`SimulatedCoder` writes the
reference program with probability ``p`` and otherwise one of the problem's one-edit mutants, at
random; whether that program passes the docstring's examples or the hidden tests was measured by
running it (``course/results/humaneval_programs.csv``, made by ``scripts/humaneval_programs.py``).
So what an agent loop gains is measured, as a function of the stated rates:

* :func:`one_draft`: pass@1 of a single program;
* :func:`retry_on_examples`: the AutoGen-style executor loop: run the examples the prompt shows,
  and while they fail and attempts remain, ask again (the model ignores the error: a fresh draft);
* :func:`self_refine`: no tests at all: a critic judges each program, right with probability ``q``,
  and a rejection is followed by a refinement (Self-Refine; the critic is the only signal);
* :func:`reflexion`: as above, but after a failure a reflector names the real failing example
  with probability ``r``; a reflection that does lets the coder repair its program (the next draft
  is correct with probability ``p_fix``); one that does not is worth nothing (a fresh draft).

Problems are recognised by their task id. The randomness is Python's ``random.Random(seed)``, which
gives the same draws on every machine, so the curves are exact for a given table and seed.
What this measures is the loop (how often the examples catch a mistake, how often a wrong program
slips through them), not how often any real model errs: ``p``, ``r`` and ``p_fix`` are inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .. import bench

__all__ = ["Program", "load_programs", "SimulatedCoder", "one_draft", "retry_on_examples", "reflexion",
           "self_refine", "pass_rate",
           "Edit", "load_edits", "fix_bug", "fix_rate", "probability"]

PROGRAMS_CSV = Path(__file__).resolve().parents[1] / "results" / "humaneval_programs.csv"


@dataclass(frozen=True)
class Program:
    """One program for a problem, and what running it showed."""

    index: int              # 0: the reference; 1..: mutants
    edit: str
    examples: int           # worked examples in the prompt (that the reference passes)
    examples_passed: int
    hidden_ok: bool

    @property
    def examples_ok(self) -> bool:
        return self.examples_passed == self.examples


def load_programs(path: str | Path = PROGRAMS_CSV) -> dict[str, list[Program]]:
    """Task id -> its programs (reference first), from the table the script measured."""
    rows, _ = bench.load_csv(path)
    table: dict[str, list[Program]] = {}
    for row in rows:
        table.setdefault(row["task_id"], []).append(Program(
            int(row["program"]), str(row["edit"]), int(row["examples"]), int(row["examples_passed"]),
            bool(int(row["hidden_ok"]))))
    for task_id, programs in table.items():
        if programs[0].index != 0 or not programs[0].hidden_ok:
            raise ValueError(f"{task_id}: the first program must be the reference, passing its hidden tests")
    return table


def probability(name: str, value: float) -> float:
    """``value`` as a float if it is a probability, else a ValueError naming the rate ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class SimulatedCoder:
    """Writes the reference program with probability ``p``, else a mutant chosen uniformly."""

    def __init__(self, p: float, rng: random.Random):
        self.p = probability("p", p)
        self.rng = rng

    def draft(self, programs: list[Program], p: float | None = None) -> Program:
        """One program for the problem; ``p`` overrides the coder's rate (a repair attempt)."""
        mutants = programs[1:]
        if not mutants or self.rng.random() < (self.p if p is None else p):
            return programs[0]
        return self.rng.choice(mutants)


def one_draft(programs: list[Program], coder: SimulatedCoder) -> tuple[Program, int]:
    """A single program: (the program kept, attempts used)."""
    return coder.draft(programs), 1


def retry_on_examples(programs: list[Program], coder: SimulatedCoder, attempts: int) -> tuple[Program, int]:
    """Draft, run the prompt's examples, draft again while they fail: at most ``attempts`` drafts."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    program = coder.draft(programs)
    used = 1
    while not program.examples_ok and used < attempts:
        program, used = coder.draft(programs), used + 1
    return program, used


def reflexion(programs: list[Program], coder: SimulatedCoder, attempts: int, *, r: float,
              p_fix: float) -> tuple[Program, int]:
    """As :func:`retry_on_examples`, with a reflection after each failure that is right with probability ``r``."""
    probability("r", r), probability("p_fix", p_fix)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    program = coder.draft(programs)
    used = 1
    while not program.examples_ok and used < attempts:
        names_real_failure = coder.rng.random() < r
        program = coder.draft(programs, p_fix if names_real_failure else None)
        used += 1
    return program, used


def self_refine(programs: list[Program], coder: SimulatedCoder, rounds: int, *, q: float) -> tuple[Program, int]:
    """Self-Refine with no tests: a critic judges each program, right with probability ``q``.

    A rejected program is rewritten (a fresh draft: the critic's words carry no more than its
    verdict); an accepted one ends the loop, as does the round budget. The critic is the only
    signal, so the loop can select for correct programs only as far as ``q`` beats a coin.
    """
    probability("q", q)
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    program, used = coder.draft(programs), 1
    for _ in range(rounds):
        critic_right = coder.rng.random() < q
        rejects = (not program.hidden_ok) if critic_right else program.hidden_ok
        if not rejects:
            break
        program, used = coder.draft(programs), used + 1
    return program, used


# --- SWE-agent's edit guardrail ------------------------------------------------------------------------

EDITS_CSV = Path(__file__).resolve().parents[1] / "results" / "humaneval_edits.csv"


@dataclass(frozen=True)
class Edit:
    """One way of typing a bug's fix: right ("none") or with an indentation slip, and what it did."""

    slip: str
    refused: bool           # the linter refused it (the file would not compile)
    hidden_ok: bool         # the file it leaves, written anyway, passes the hidden tests


def load_edits(path: str | Path = EDITS_CSV) -> dict[tuple[str, int], list[Edit]]:
    """(task id, mutant) -> the fix typed right first, then its slips, from the table the script measured."""
    rows, _ = bench.load_csv(path)
    edits: dict[tuple[str, int], list[Edit]] = {}
    for row in rows:
        edits.setdefault((row["task_id"], int(row["mutant"])), []).append(
            Edit(str(row["slip"]), row["lint"] != "accepted", bool(int(row["hidden_ok"]))))
    return edits


def fix_bug(edits: list[Edit], rng: random.Random, *, slip_rate: float, guardrail: bool,
            attempts: int = 3) -> tuple[bool, int]:
    """A simulated editor types the fix, slipping with probability ``slip_rate`` (a random slip kind).

    With the guardrail a refused edit is shown back and typed again, up to ``attempts`` edits;
    without it the first edit is written whatever it does and the editor moves on.
    Returns (the file passes the hidden tests, edit commands used).
    """
    probability("slip_rate", slip_rate)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    right, slipped = edits[0], edits[1:]
    used = 0
    while True:
        used += 1
        edit = rng.choice(slipped) if slipped and rng.random() < slip_rate else right
        if not guardrail:
            return edit.hidden_ok, used              # written whatever it does
        if not edit.refused:
            return edit.hidden_ok, used              # compiled, so the linter let it through
        if used == attempts:
            return False, used                       # every attempt refused: the bug is still there


def fix_rate(edits: dict[tuple[str, int], list[Edit]], *, slip_rate: float, guardrail: bool, seed: int,
             attempts: int = 3) -> tuple[float, float]:
    """(share of bugs fixed, mean edit commands) over every bug, for one seed."""
    rng = random.Random(seed)
    results = [fix_bug(edits[key], rng, slip_rate=slip_rate, guardrail=guardrail, attempts=attempts)
               for key in sorted(edits)]
    return sum(ok for ok, _ in results) / len(results), sum(used for _, used in results) / len(results)


def pass_rate(table: dict[str, list[Program]], loop, *, p: float, seed: int, **options) -> tuple[float, float]:
    """(share of problems whose kept program passes the hidden tests, mean attempts) for one seed."""
    coder = SimulatedCoder(p, random.Random(seed))
    passed = attempts = 0
    for task_id in sorted(table, key=lambda t: int(t.split("/")[1])):
        program, used = loop(table[task_id], coder, **options)
        passed += program.hidden_ok
        attempts += used
    return passed / len(table), attempts / len(table)
