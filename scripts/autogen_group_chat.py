"""AutoGen's group chat measured with simulated agents at stated rates, on HumanEval's 164 problems.

    COURSE_HEADLESS=1 python scripts/autogen_group_chat.py        # under a minute on one core

Writes course/results/autogen_group_chat.csv, one row per (set-up, p, m, q, turn budget, seed):
how many problems the kept program solves (hidden tests) and what it cost (turns, model calls,
approximate tokens, all summed over the 164 problems). The set-ups (``course.llm.simulated_chat``):

* single agent: one draft of a coder that writes the reference program with probability p;
* coder + executor: AutoGen's assistant + user proxy: the examples are run after each draft;
* group, round-robin: coder, executor and a critic whose verdict is right with probability q,
  speaking in turn; the critic's approval ends the chat;
* group, manager: the same three, the next speaker picked by a manager right with probability m
  (else a speaker drawn uniformly), each pick a model call that reads the whole chat.

The programs and what they do come from course/results/humaneval_programs.csv (measured by running
them); nothing here runs code, so the table is exact for a given seed (Python's string-seeded
``random.Random`` draws the same on every machine).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from course import bench
from course.llm import humaneval, simulated
from course.llm import simulated_chat as chat

OUT = Path(__file__).resolve().parents[1] / "course" / "results" / "autogen_group_chat.csv"
P_RATES = (0.1, 0.3, 0.5, 0.7, 0.9)
M_RATES = (0.0, 0.5, 0.8, 1.0)
Q_RATES = (0.5, 0.7, 0.9, 1.0)
TURN_BUDGETS = (6, 12)
SEEDS = range(5)


def load_tasks() -> list[chat.ChatTask]:
    programs = simulated.load_programs()
    rows, _ = bench.load_csv(simulated.PROGRAMS_CSV)
    feedback = {(r["task_id"], int(r["program"])): str(r["feedback"]) for r in rows}
    return chat.make_tasks(programs, humaneval.load_problems(), feedback, humaneval.reference_program)


def settings():
    """Every (set-up, m, q) measured; the single agent and the pair have neither rate."""
    yield "single agent", None, None
    yield "coder + executor", None, None
    for q in Q_RATES:
        yield "group, round-robin", None, q
    for m, q in itertools.product(M_RATES, Q_RATES):
        yield "group, manager", m, q


def main() -> None:
    start = time.time()
    tasks = load_tasks()
    rows = []
    for (mechanism, m, q), p, max_turns, seed in itertools.product(list(settings()), P_RATES, TURN_BUDGETS, SEEDS):
        result = chat.run_mechanism(tasks, mechanism, p=p, seed=seed, max_turns=max_turns, m=m, q=q)
        rows.append({"mechanism": mechanism, "p": p, "m": "" if m is None else m, "q": "" if q is None else q,
                     "max_turns": max_turns, "seed": seed, **result})
    bench.save_csv(rows, OUT, tags={**bench.environment_tags(), "seeds": ",".join(map(str, SEEDS)),
                                    "programs": "course/results/humaneval_programs.csv",
                                    "tokens": "course.llm.approx_tokens estimates (no tokenizer)",
                                    "command": "python scripts/autogen_group_chat.py"})
    print(f"{len(rows)} rows, {len(tasks)} problems, {time.time() - start:.0f} s -> {OUT}")


if __name__ == "__main__":
    main()
