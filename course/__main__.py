"""Command line: ``python -m course {build,grade,verify,execute,status}``.

    python -m course build [--check]                 regenerate notebooks/ from solutions/
    python -m course grade SUBMISSION.ipynb [--json F] [--junit F]
    python -m course grade DIR --gradebook grades.csv [--junit F]
    python -m course verify solutions/01_transformer.ipynb   every check fails on its stub, passes on the solution
    python -m course execute solutions/01_transformer.ipynb  re-run a solution and store its outputs
    python -m course status notebooks/ [--run] [--json F]   which exercises pass (from saved outputs)

Exit codes of ``grade``: 0 whenever grading ran, whatever the score (a failing submission is a
result, not an error); 2 when grading itself could not run (missing file, unknown notebook,
bad arguments). ``status`` likewise: 0 when it could read the notebooks, 2 when the path is missing
or no notebook in it matches a solution.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _build(args) -> int:
    from .grading import exercises

    if args.check:
        problems = exercises.drift(args.solutions, args.notebooks)
        for line in problems:
            print(f"drift: {line}")
        if problems:
            print("run `make notebooks` (python -m course build) and commit the result")
        return 1 if problems else 0
    changed = exercises.build(args.solutions, args.notebooks)
    total = len(list(Path(args.solutions).glob("*.ipynb")))
    print(f"built {total} student notebook(s) in {args.notebooks}; {len(changed)} changed")
    for path in changed:
        print(f"  updated {path}")
    return 0


def _grade(args) -> int:
    from .grading import grader

    target = Path(args.submission)
    if target.is_dir():
        paths = sorted(p for p in target.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        if not paths:
            print(f"error: no .ipynb files under {target}", file=sys.stderr)
            return 2
    elif target.is_file():
        paths = [target]
    else:
        print(f"error: no such file or directory: {target}", file=sys.stderr)
        return 2
    reports, failed_to_grade = [], []
    for path in paths:
        try:
            report = grader.grade(path, solutions_dir=args.solutions, cell_timeout=args.cell_timeout,
                                  total_timeout=args.total_timeout, memory_limit=args.memory_limit)
        except grader.GradingError as error:
            print(f"error: {error}", file=sys.stderr)
            failed_to_grade.append(path)
            continue
        reports.append(report)
        print(grader.format_report(report, color=sys.stdout.isatty()))
    if args.json:
        payload = [r.to_dict() for r in reports]
        Path(args.json).write_text(json.dumps(payload[0] if len(payload) == 1 and target.is_file() else payload,
                                              indent=1) + "\n")
    # in a folder of submissions, two learners' files share a name: name each by its path under the
    # folder (alice/notebooks/01_transformer.ipynb) in the JUnit suites and the gradebook
    labels = [Path(r.submission).relative_to(target).as_posix() if target.is_dir() else Path(r.submission).name
              for r in reports]
    if args.junit:
        suites = ET.fromstring(grader.junit_xml(reports))
        for suite, report, label in zip(suites, reports, labels, strict=True):
            suite.set("name", f"{report.notebook} ({label})")
        Path(args.junit).write_text(ET.tostring(suites, encoding="unicode") + "\n")
    if args.gradebook:
        rows = grader.gradebook_rows(reports)
        for row, label in zip(rows, labels, strict=True):
            row["submission"] = label
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            with open(args.gradebook, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            print(f"gradebook: {len(rows)} submission(s) -> {args.gradebook}")
    return 2 if failed_to_grade and not reports else 0


def _verify(args) -> int:
    from .grading import exercises, grader

    status = 0
    for path in args.solutions:
        manifest = exercises.parse_exercises(exercises.read(path), Path(path).stem)
        result = grader.verify_solution(path)
        problems = result.problems(manifest)
        verdict = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{path}: {len(manifest.exercises)} exercises, {result.seconds:.1f} s, {verdict}")
        for line in problems:
            print(f"  - {line}")
        status |= bool(problems)
    return status


def _execute(args) -> int:
    """Re-run solutions and store their outputs, as nbval will compare them."""
    import nbformat
    from nbclient import NotebookClient

    from .grading.exercises import write_deterministic
    from .grading.kernel import kernel_env

    for name in args.solutions:
        path = Path(name)
        nb = nbformat.read(str(path), as_version=4)
        start = time.perf_counter()
        client = NotebookClient(nb, kernel_name="python3", timeout=args.cell_timeout, record_timing=True,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute(env=kernel_env(plots=True), cwd=str(path.parent))  # starts and stops its own kernel
        seconds = time.perf_counter() - start
        print(f"{path}: executed in {seconds:.1f} s; slowest cells:")
        for index, cell_seconds in sorted(_cell_seconds(nb).items(), key=lambda kv: -kv[1])[:5]:
            print(f"  cell {index:3d}: {cell_seconds:6.1f} s")
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
        nb.metadata.pop("widgets", None)
        write_deterministic(nb, path)
    return 0


def _cell_seconds(nb) -> dict[int, float]:
    """Wall time of each executed cell, from the timestamps nbclient records."""
    from datetime import datetime

    times = {}
    for index, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            begin = datetime.fromisoformat(stamps["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(stamps["shell.execute_reply"].replace("Z", "+00:00"))
            times[index] = (end - begin).total_seconds()
    return times


def _size(text: str) -> int:
    from .grading.kernel import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    from .grading import status

    parser = argparse.ArgumentParser(prog="python -m course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="regenerate student notebooks from solutions")
    p.add_argument("--solutions", default=str(REPO / "solutions"))
    p.add_argument("--notebooks", default=str(REPO / "notebooks"))
    p.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    p.set_defaults(func=_build)

    p = sub.add_parser("grade", help="grade a submission, or a folder of them")
    p.add_argument("submission", help="a .ipynb file, or a folder searched recursively")
    p.add_argument("--solutions", default=str(REPO / "solutions"), help="folder of solution notebooks")
    p.add_argument("--json", help="write the report(s) as JSON here")
    p.add_argument("--junit", help="write a JUnit XML report here")
    p.add_argument("--gradebook", help="write one CSV row per submission here")
    p.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell (default 300)")
    p.add_argument("--total-timeout", type=float, default=1200, help="seconds per submission (default 1200)")
    p.add_argument("--memory-limit", type=_size, default=None, metavar="SIZE",
                   help="cap each grading kernel's address space, e.g. 8G (Linux, CPU-only machines; at least 2G; default: none)")
    p.set_defaults(func=_grade)

    p = sub.add_parser("verify", help="meta-test: each check fails on its stub and passes on the solution")
    p.add_argument("solutions", nargs="+")
    p.set_defaults(func=_verify)

    p = sub.add_parser("execute", help="re-run solutions in place, storing outputs for nbval")
    p.add_argument("solutions", nargs="+")
    p.add_argument("--cell-timeout", type=int, default=600)
    p.set_defaults(func=_execute)

    p = sub.add_parser("status", help="which exercises pass, read from a notebook's saved outputs")
    status.add_arguments(p)
    p.set_defaults(func=status.main_status)

    args = parser.parse_args(argv)
    for flag in ("cell_timeout", "total_timeout"):
        if getattr(args, flag, 1) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
