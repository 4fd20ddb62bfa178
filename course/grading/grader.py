"""Grade a submitted notebook: run it in a fresh kernel, then judge every exercise from outside it.

The exercises, their points and their check code come from the *solution* notebook of the same
name (``solutions/<name>.ipynb``), never from the submission, so editing or deleting a check cell
changes nothing. The checks themselves run in this process (:mod:`course.grading.judge`), calling
the learner's code in the kernel through a socket; no verdict is read from the kernel. Grading always produces a :class:`Report`; only a submission the grader cannot
identify (no solution of that name) or a missing file is an error of grading itself.
"""

from __future__ import annotations

import importlib
import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import nbformat

from . import exercises as ex
from .judge import judge_checks
from .kernel import cell_label, check_memory_limit, execute_cells

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOLUTIONS = REPO / "solutions"


class GradingError(Exception):
    """Grading itself could not run (unknown notebook, missing file)."""


@dataclass
class ExerciseResult:
    id: str
    title: str
    points: int
    max_points: int
    passed: bool
    message: str
    #: False only for a check not yet ported to the judge: it ran in the submission's kernel, so a
    #: submission that patches the course there could fake it (see docs/classroom.md)
    judged: bool = True


@dataclass
class Report:
    submission: str
    notebook: str
    exercises: list[ExerciseResult] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def points(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def max_points(self) -> int:
        return sum(e.max_points for e in self.exercises)

    def to_dict(self) -> dict:
        return {"submission": self.submission, "notebook": self.notebook, "points": self.points,
                "max_points": self.max_points, "seconds": round(self.seconds, 1),
                "exercises": [asdict(e) for e in self.exercises], "events": self.events}


# --- which notebook is this? ------------------------------------------------------------------


def identify(nb, path: Path, solutions_dir: Path) -> str:
    """The solution name a submission answers: from its metadata, else from its file name."""
    known = {p.stem for p in solutions_dir.glob("*.ipynb")}
    claimed = nb.get("metadata", {}).get("course", {}).get("notebook") if nb is not None else None
    if isinstance(claimed, str) and claimed in known:
        return claimed
    for name in sorted(known, key=len, reverse=True):  # 'alice_01_transformer.ipynb' -> '01_transformer'
        if name in path.stem:
            return name
    raise GradingError(f"cannot tell which notebook {path.name} answers: no solution named like it in "
                       f"{solutions_dir} (known: {sorted(known)})")


def load_manifest(name: str, solutions_dir: Path) -> ex.Manifest:
    return ex.parse_exercises(ex.read(solutions_dir / f"{name}.ipynb"), name)


def _probe_code(function: str, *args) -> str:
    rendered = ", ".join(repr(a) for a in args)
    return f"import course.grading.probe as _course_probe\n_course_probe.{function}({rendered})"


def _code_sources(nb) -> list[str]:
    return [ex.source(c) for c in nb.cells if c.get("cell_type") == "code"]


def _code_ids(nb) -> list[str]:
    """The code cells' ids, as a report may show them: a submission writes them, so only the
    characters nbformat allows in an id, at most its 64 ("" where a cell has none)."""
    return [re.sub(r"[^A-Za-z0-9_-]", "", str(c.get("id") or ""))[:64] for c in nb.cells if c.get("cell_type") == "code"]


# --- grading ----------------------------------------------------------------------------------


def grade(submission: str | Path, *, solutions_dir: str | Path | None = None, cell_timeout: float = 300,
          total_timeout: float = 1200, check_timeout: float = 120, memory_limit: int | None = None) -> Report:
    """Grade one submission. Raises :class:`GradingError` only when grading cannot run at all.

    ``memory_limit`` (bytes, optional) caps the kernel's address space: a submission that
    allocates more gets a ``MemoryError`` (torch: "can't allocate memory") in its own cell instead
    of the machine's memory.
    """
    path = Path(submission)
    solutions_dir = Path(solutions_dir) if solutions_dir else DEFAULT_SOLUTIONS
    if memory_limit is not None:
        try:
            check_memory_limit(memory_limit)
        except (ValueError, RuntimeError) as error:
            raise GradingError(str(error)) from None
    if not path.is_file():
        raise GradingError(f"no such submission file: {path}")
    start = time.perf_counter()
    try:
        nb = nbformat.read(str(path), as_version=4)
        unreadable = None
    except Exception as error:  # noqa: BLE001 - any broken file still gets a report
        nb, unreadable = None, f"the file is not a readable notebook: {type(error).__name__}: {str(error)[:300]}"
    name = identify(nb, path, solutions_dir)
    manifest = load_manifest(name, solutions_dir)
    if manifest.exercises:
        try:  # the judge runs the checks here: a broken course is an error of grading, found first
            importlib.import_module(manifest.check_module)
        except Exception as error:  # noqa: BLE001
            raise GradingError(f"the check module {manifest.check_module} cannot be imported: "
                               f"{type(error).__name__}: {error}") from None
    report = Report(str(path), name)
    if unreadable:
        report.events.append(unreadable)
        report.exercises = [_result(e, False, unreadable) for e in manifest.exercises]
        report.seconds = time.perf_counter() - start
        return report

    with tempfile.TemporaryDirectory(prefix="course-grade-") as workdir:
        ids = _code_ids(nb)
        run = execute_cells(_code_sources(nb), workdir, cell_timeout=cell_timeout, total_timeout=total_timeout,
                            memory_limit=memory_limit, ids=ids)
        report.events = run.events
        results, problem = _run_checks(run.session, manifest, workdir, check_timeout)
        if problem:
            report.events.append(problem)
        if run.session is not None:
            run.session.stop()
    cut_short = _cut_short(run, ids)
    report.exercises = [_result(e, *_noting(results.get(e.id, (False, "the check could not run")), cut_short))
                        for e in manifest.exercises]
    report.seconds = time.perf_counter() - start
    return report


def _in_kernel(manifest: ex.Manifest) -> set[str]:
    """Exercises whose check is not yet ported to the judge: a check module lists their check
    functions in ``NOT_JUDGED``. They still run in the kernel, and the report says so."""
    names = set(getattr(importlib.import_module(manifest.check_module), "NOT_JUDGED", ()))
    return {e.id for e in manifest.exercises if set(ex.CHECK_CALL.findall(e.check_source)) & names}


def _run_checks(session, manifest: ex.Manifest, workdir: str, check_timeout: float) -> tuple[dict, str]:
    """Every exercise's verdict, decided by the judge in this process (see course.grading.judge)."""
    if session is None:
        return {e.id: (False, "the notebook could not be executed, so the check could not run", True)
                for e in manifest.exercises}, ""
    in_kernel = _in_kernel(manifest)
    judged = [e for e in manifest.exercises if e.id not in in_kernel]
    raw, problem = judge_checks(session, manifest.check_module, [e.to_dict() for e in judged], check_timeout)
    why = problem or "the check could not run"
    results = {e.id: (raw[e.id]["passed"], raw[e.id]["message"], True) if e.id in raw else (False, why, True)
               for e in judged}
    legacy = [e for e in manifest.exercises if e.id in in_kernel]
    if legacy and session.responsive():
        out = str(Path(workdir) / f"check-results-{time.time_ns()}.json")
        code = _probe_code("grade_checks", manifest.check_module, [e.to_dict() for e in legacy], out, check_timeout)
        outcome = session.run(code, check_timeout * len(legacy) + 30)
        try:
            found = json.loads(Path(out).read_text())
        except (OSError, ValueError):
            found = {}
        for e in legacy:
            r = found.get(e.id) if isinstance(found, dict) else None
            ok = isinstance(r, dict) and r.get("passed") is True
            results[e.id] = (ok, str(r.get("message", ""))[:4000] if isinstance(r, dict) else
                             f"checks did not finish ({outcome.error})", False)
    return {e.id: results.get(e.id, (False, why, e.id not in in_kernel)) for e in manifest.exercises}, problem


def _cut_short(run, ids: list[str]) -> str:
    """What of the notebook did not run ("" if it all ran)."""
    said = []
    if run.skipped:
        said.append(f"the grader skipped {', '.join(cell_label(i, ids) for i in run.skipped)}")
    if not run.finished:
        said.append("the notebook did not run to its end")
    return " and ".join(said)


def _noting(result: tuple, cut_short: str) -> tuple:
    """A failed check's result, its message saying what of the notebook did not run: what those
    cells define was missing when the check ran, which may be why it failed."""
    passed, message, *rest = result
    if passed or not cut_short:
        return result
    return (passed, f"{message}\n({cut_short}, so what it defines was missing when the check ran; "
                    "the report's notes say why)", *rest)


def _result(exercise: ex.Exercise, passed: bool, message: str, judged: bool = True) -> ExerciseResult:
    return ExerciseResult(exercise.id, exercise.title, exercise.points if passed else 0, exercise.points, passed,
                          message, judged)


# --- the meta-test: stub fails, solution passes, every mutant fails ----------------------------


@dataclass(frozen=True)
class Mutant:
    """A plausible wrong solution to one exercise: its check must fail on it.

    Written as ``edits``, pairs (text of the solution cells, its wrong replacement), each old text found
    exactly once, so a mutant stays a small readable edit of the solution and stops applying, loudly,
    when the solution changes under it. ``cells`` instead gives the wrong cells' whole sources, one per
    solution cell, for a rewrite too different to read as edits.
    """

    name: str
    why: str
    edits: tuple[tuple[str, str], ...] = ()
    cells: tuple[str, ...] | None = None

    def sources(self, solutions: list[str]) -> list[str]:
        """The exercise's solution cells with this mutant applied; ValueError when it does not apply."""
        if (self.cells is None) == (not self.edits):
            raise ValueError(f"mutant {self.name!r} needs either edits or cells, not both or neither")
        if self.cells is not None:
            if len(self.cells) != len(solutions):
                raise ValueError(f"mutant {self.name!r} gives {len(self.cells)} cells; the exercise has "
                                 f"{len(solutions)} solution cells")
            return list(self.cells)
        out = list(solutions)
        for old, wrong in self.edits:
            where = [i for i, text in enumerate(out) if old in text]
            count = sum(text.count(old) for text in out)
            if count != 1:
                raise ValueError(f"mutant {self.name!r}: expected the text {old[:80]!r} once in the solution "
                                 f"cells, found it {count} times (did the solution change?)")
            out[where[0]] = out[where[0]].replace(old, wrong)
        if out == list(solutions):
            raise ValueError(f"mutant {self.name!r} changes nothing")
        return out


@dataclass
class Verification:
    notebook: str
    #: id -> {"solution": {...}, "stub": {...}, "mutants": {name: {...}}}, each {passed, message, seconds}
    exercises: dict[str, dict] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self, manifest: ex.Manifest) -> list[str]:
        found = list(self.events)
        for e in manifest.exercises:
            outcome = self.exercises.get(e.id)
            if outcome is None:
                found.append(f"{e.label}: never probed")
                continue
            if not outcome["solution"]["passed"]:
                found.append(f"{e.label}: check fails on the solution: {outcome['solution']['message']}")
            if outcome["stub"].get("error"):
                found.append(f"{e.label}: the student stub cannot be run: {outcome['stub']['error']}")
            elif outcome["stub"]["passed"]:
                found.append(f"{e.label}: check PASSES on the student stub (a check that cannot fail)")
            for name, wrong in outcome.get("mutants", {}).items():
                if wrong.get("error"):
                    found.append(f"{e.label}: mutant {name} tests nothing: {wrong['error']}")
                elif wrong["passed"]:
                    found.append(f"{e.label}: check PASSES on mutant {name}")
        return found

    def mutant_seconds(self) -> float:
        """Seconds the mutants took (their cells and their checks): what they add to the meta-test."""
        return sum(m["seconds"] for o in self.exercises.values() for m in o.get("mutants", {}).values())


def verify_solution(solution: str | Path, *, cell_timeout: float = 300, total_timeout: float = 900,
                    check_timeout: float = 120, mutants: dict[str, list[Mutant]] | None = None) -> Verification:
    """Execute a solution once; after each exercise's check cell, swap in the stub and re-check, then
    each of the exercise's ``mutants`` (exercise id -> plausible wrong solutions) and re-check.

    One execution serves all exercises: after probing, the solution code is executed again so
    later cells see the real implementation. A mutant for an exercise the notebook lacks, or one
    that no longer applies to the solution, is reported in ``events``.
    """
    path = Path(solution)
    nb = ex.read(path)
    manifest = ex.parse_exercises(nb, path.stem)
    code_index = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    by_check_cell = {code_index.index(e.check_cell): e for e in manifest.exercises}
    result = Verification(path.stem)
    mutants = dict(mutants or {})
    for unknown in sorted(set(mutants) - {e.id for e in manifest.exercises}):
        result.events.append(f"mutants declared for exercise {unknown}, which {path.stem} does not have")

    def wrong_versions(exercise: ex.Exercise, solutions: list[str]) -> list[list]:
        versions = []
        for mutant in mutants.get(exercise.id, []):
            try:
                versions.append([mutant.name, mutant.sources(solutions)])
            except ValueError as error:
                result.events.append(f"{exercise.label}: {error}")
        return versions

    with tempfile.TemporaryDirectory(prefix="course-verify-") as workdir:

        def probe(i, session, outcome):
            exercise = by_check_cell.get(i)
            if exercise is None:
                return
            solutions = [ex.source(nb.cells[j]) for j in exercise.solution_cells]
            stubs = [ex.stub_source(s, exercise.label) for s in solutions]
            wrong = wrong_versions(exercise, solutions)
            out = str(Path(workdir) / f"verify-{exercise.id}.json")
            code = _probe_code("verify_exercise", manifest.check_module, exercise.to_dict(), stubs, solutions, out,
                               check_timeout, wrong)
            probe_outcome = session.run(code, (2 + len(wrong)) * check_timeout + 60)
            try:
                result.exercises[exercise.id] = json.loads(Path(out).read_text())
            except (OSError, ValueError):
                result.events.append(f"{exercise.label}: probe failed ({probe_outcome.status}: {probe_outcome.error})")

        start = time.perf_counter()
        run = execute_cells(_code_sources(nb), workdir, cell_timeout=cell_timeout, total_timeout=total_timeout,
                            max_restarts=0, on_cell=probe, ids=_code_ids(nb))
        result.events.extend(run.events)
        if run.session is not None:
            run.session.stop()
        result.seconds = time.perf_counter() - start
    return result


# --- reports ------------------------------------------------------------------------------------


def format_report(report: Report, *, color: bool = False) -> str:
    green, red, reset = ("\033[32m", "\033[31m", "\033[0m") if color else ("", "", "")
    lines = [f"{report.submission}  (graded as {report.notebook}, {report.seconds:.0f} s)"]
    width = max([len(e.title) for e in report.exercises] + [5])
    lines.append(f"  {'ex.':<6}{'title':<{width}}  points  result")
    for e in report.exercises:
        first = (e.message.splitlines() or [""])[0]
        verdict = f"{green}passed{reset}" if e.passed else f"{red}failed{reset}: {first[:100]}"
        if not e.judged:
            verdict += " [checked in the submission's kernel, not tamper-proof]"
        lines.append(f"  {e.id:<6}{e.title:<{width}}  {e.points:>2}/{e.max_points:<3}  {verdict}")
    percent = 100 * report.points / report.max_points if report.max_points else 0.0
    lines.append(f"  total: {report.points}/{report.max_points} points ({percent:.0f}%)")
    for event in report.events:
        lines.append(f"  note: {event[:300]}")
    return "\n".join(lines)


def junit_xml(reports: list[Report]) -> str:
    """JUnit XML: a test suite per submission, a test case per exercise (CI systems render it)."""
    suites = ET.Element("testsuites")
    for report in reports:
        failures = sum(not e.passed for e in report.exercises)
        suite = ET.SubElement(suites, "testsuite", name=f"{report.notebook} ({Path(report.submission).name})",
                              tests=str(len(report.exercises)), failures=str(failures), errors="0",
                              time=f"{report.seconds:.1f}")
        for e in report.exercises:
            case = ET.SubElement(suite, "testcase", classname=report.notebook,
                                 name=f"Exercise {e.id}: {e.title} ({e.max_points} points)", time="0")
            if not e.passed:
                failure = ET.SubElement(case, "failure", message=_xml_safe(e.message.splitlines()[0] if e.message
                                                                             else "failed"))
                failure.text = _xml_safe(e.message)
        if report.events:
            ET.SubElement(suite, "system-out").text = _xml_safe("\n".join(report.events))
    return ET.tostring(suites, encoding="unicode") + "\n"


def _xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (a submission may print anything)."""
    return re.sub(r"[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd]", "?", text)[:10000]


def gradebook_rows(reports: list[Report]) -> list[dict]:
    ids = list(dict.fromkeys(e.id for r in reports for e in r.exercises))
    rows = []
    for r in reports:
        row = {"submission": Path(r.submission).name, "notebook": r.notebook}
        scored = {e.id: e.points for e in r.exercises}
        row.update({f"ex_{i}": scored.get(i, "") for i in ids})
        row.update({"points": r.points, "max_points": r.max_points,
                    "percent": round(100 * r.points / r.max_points, 1) if r.max_points else 0.0,
                    "notes": " | ".join(r.events)[:500]})
        rows.append(row)
    return rows
