"""Checks for notebook 16 (Reflexion): the unit-test evaluator, the bounded episodic memory, the
trial loop with its budgets, pass@1 against trial number, and the quality of self-written tests.

Everything is exact (strings, dicts, call counts, fractions of small integers computed the same
way), so no tolerances are needed except for the rates, compared to 1e-12 (float division of
small integers is exact to that).
"""

from __future__ import annotations

import math

from .. import llm
from .core import CheckFailed, check, require


def _show(value) -> str:
    return repr(value)[:300]


class _CountingRun:
    def __init__(self, **options):
        self.options, self.calls = options, 0

    def __call__(self, program):
        self.calls += 1
        return llm.run_python(program, **self.options)


# --- 16.1 -----------------------------------------------------------------------------------------

_ADD = "def add(a, b):\n    return a + b\n"
_SUB = "def add(a, b):\n    return a - b\n"
_RUN_TESTS_CASES = [
    # (what, code, tests, expected: None for pass, else a text the error must contain)
    ("a correct function", _ADD, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], [None, None]),
    ("one failing test, then a passing one", _SUB, ["assert add(2, 2) == 4", "assert add(2, 0) == 2"],
     ["AssertionError", None]),
    ("a test that raises", _ADD, ["assert add([1], 2) == [1, 2]", "assert add(0, 0) == 0"], ["TypeError", None]),
    ("code with a syntax error", "def add(a, b)\n    return a + b\n", ["assert add(1, 2) == 3", "assert True"],
     ["SyntaxError", "SyntaxError"]),
    ("a multi-line test", _ADD, ["try:\n    add(1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('no')",
                                 "assert add('a', 'b') == 'ab'"], [None, None]),
]


@check
def run_tests(fn):
    """``fn(code, tests, run)`` runs every test once, in one sandboxed process, and reports each."""
    require(callable(fn), f"run_tests must be a function, got {type(fn).__name__}")
    for what, code, tests, expected in _RUN_TESTS_CASES:
        run = _CountingRun(timeout_s=5)
        got = fn(code, list(tests), run)
        require(isinstance(got, dict), f"{what}: run_tests should return a dict test -> None or error text, "
                                       f"got {type(got).__name__}")
        require(list(got) == list(tests), f"{what}: the keys should be the tests, in order; got {_show(list(got))}")
        require(run.calls == 1, f"{what}: run(program) was called {run.calls} times; call it exactly once"
                + ("\n  hint: build one program that runs every test, so Python starts once (about 0.1 s each)"
                   if run.calls > 1 else ""))
        for test, want in zip(tests, expected, strict=False):
            value = got[test]
            if want is None:
                hint = ""
                if isinstance(value, str) and "AssertionError" in value and what.startswith("one failing"):
                    hint = "\n  hint: keep going after a failed test; every test gets its own verdict"
                require(value is None, f"{what}: test {test!r} should pass (None), got {_show(value)}{hint}")
            else:
                require(isinstance(value, str) and want in value,
                        f"{what}: test {test.splitlines()[0]!r} should fail with a message containing {want!r}, "
                        f"got {_show(value)}"
                        + ("\n  hint: put the error type's name in the message: f'{type(e).__name__}: {e}'"
                           if isinstance(value, str) else ""))
    run = _CountingRun(timeout_s=1)
    tests = ["assert f() == 1", "assert True"]
    got = fn("def f():\n    while True:\n        pass\n", tests, run)
    require(isinstance(got, dict) and list(got) == tests and all(isinstance(got[t], str) and "timed out" in got[t]
                                                                  for t in tests[:1]),
            f"an endless loop under a 1 s limit: the unfinished test should report the run's message "
            f"('... timed out ...'), got {_show(got)}"
            "\n  hint: a test with no result line gets f'no result: {result.message}'")
    return f"{len(_RUN_TESTS_CASES) + 1} programs: pass, fail then pass, raise, syntax error, multi-line test, timeout"


# --- 16.2 -----------------------------------------------------------------------------------------


@check
def episodic_memory(cls):
    """``cls(capacity)`` keeps the last ``capacity`` (1-3) reflections and renders them for the prompt."""
    require(callable(cls), f"EpisodicMemory must be a class, got {type(cls).__name__}")
    for bad in (0, 4, -1, 1.5, "2", True):
        try:
            cls(bad)
        except (ValueError, TypeError):
            continue
        raise CheckFailed(f"EpisodicMemory({bad!r}) should raise ValueError: the capacity is an int in 1..3"
                          "\n  hint: reject bools too (isinstance(True, int) is True)")
    m = cls(2)
    require(len(m) == 0 and m.render() == "", f"an empty memory: len 0 and render() == '', got len {len(m)}, "
                                               f"render {_show(m.render())}")
    for bad in ("", "   ", None, 3):
        try:
            m.add(bad)
        except (ValueError, TypeError):
            continue
        raise CheckFailed(f"add({bad!r}) should raise ValueError or TypeError: a reflection is a non-empty string")
    m.add("first")
    require(m.reflections == ["first"], f"after add('first'): reflections should be ['first'], got {_show(m.reflections)}")
    m.add("second")
    m.add("third")
    require(m.reflections == ["second", "third"],
            f"capacity 2 after adding first, second, third: expected ['second', 'third'] (oldest first, the oldest "
            f"dropped), got {_show(m.reflections)}"
            + ("\n  hint: drop the OLDEST reflection, keep the newest" if m.reflections == ["first", "second"] else ""))
    require(len(m) == 2, f"len should be 2, got {len(m)}")
    want = "Reflections on your previous attempts (oldest first):\n1. second\n2. third"
    require(m.render() == want, f"render() should be {want!r}, got {_show(m.render())}")
    one = cls(1)
    for text in ("a", "b", "c"):
        one.add(text)
    require(one.reflections == ["c"], f"capacity 1 keeps only the newest: expected ['c'], got {_show(one.reflections)}")
    three = cls(3)
    for text in "abcde":
        three.add(text)
    require(three.reflections == ["c", "d", "e"], f"capacity 3 after a..e: expected ['c', 'd', 'e'], "
                                                  f"got {_show(three.reflections)}")
    return "validation, eviction of the oldest for capacities 1, 2, 3, and the prompt text"


# --- 16.3 -----------------------------------------------------------------------------------------


class _Memory:
    def __init__(self):
        self.reflections = []

    def add(self, text):
        self.reflections.append(text)

    def __len__(self):
        return len(self.reflections)


def _script(passing_at=None, budget_at=None):
    """A fake actor/evaluator/reflector: the program at attempt t is f'v{t}'; it passes at ``passing_at``."""
    log = []

    def act(task, memory, attempt):
        if budget_at is not None and attempt == budget_at:
            raise llm.BudgetExceeded("budget exceeded (call budget spent: 3 of 3 model calls used)")
        log.append(("act", attempt, None if memory is None else list(memory.reflections)))
        return f"v{attempt}"

    def evaluate(task, code):
        log.append(("evaluate", code))
        ok = passing_at is not None and code == f"v{passing_at}"
        return {"t1": None, "t2": None if ok else "AssertionError"}

    def reflect(task, code, report):
        log.append(("reflect", code))
        return f"r{code[1:]}"

    return act, evaluate, reflect, log


@check
def reflexion_loop(fn):
    """``fn(task, act=, evaluate=, reflect=, memory=, max_trials=, max_seconds=, clock=)`` -> Run."""
    require(callable(fn), f"reflexion must be a function, got {type(fn).__name__}")
    act, evaluate, reflect, log = _script(passing_at=1)
    run = fn("task", act=act, evaluate=evaluate, reflect=reflect, memory=_Memory(), max_trials=4, max_seconds=60)
    require(len(run.trials) == 1 and run.stop_reason == "passed its tests at trial 1",
            f"passing at trial 1: one trial and stop_reason 'passed its tests at trial 1', got {len(run.trials)} "
            f"trial(s), {run.stop_reason!r}")
    require([e[0] for e in log] == ["act", "evaluate"], f"passing at once needs no reflection; calls were {log}")
    require(run.trials[0].reflection is None and run.trials[0].code == "v1",
            f"trial 1 should record code 'v1' and reflection None, got {run.trials[0]}")

    memory = _Memory()
    act, evaluate, reflect, log = _script(passing_at=3)
    run = fn("task", act=act, evaluate=evaluate, reflect=reflect, memory=memory, max_trials=4, max_seconds=60)
    require(run.stop_reason == "passed its tests at trial 3" and [t.number for t in run.trials] == [1, 2, 3],
            f"passing at trial 3: trials 1, 2, 3 and 'passed its tests at trial 3', got "
            f"{[t.number for t in run.trials]}, {run.stop_reason!r}")
    acts = [e for e in log if e[0] == "act"]
    require(acts == [("act", 1, []), ("act", 2, ["r1"]), ("act", 3, ["r1", "r2"])],
            f"the actor must see the memory with every earlier reflection: calls were {acts}"
            "\n  hint: reflect on a failed trial and memory.add(...) the reflection BEFORE the next act")
    require([t.reflection for t in run.trials] == ["r1", "r2", None],
            f"each failed trial records its reflection: got {[t.reflection for t in run.trials]}")
    require(run.trials[1].report == {"t1": None, "t2": "AssertionError"},
            f"a trial records the evaluator's report, got {_show(run.trials[1].report)}")

    act, evaluate, reflect, log = _script(passing_at=None)
    run = fn("task", act=act, evaluate=evaluate, reflect=reflect, memory=None, max_trials=3, max_seconds=60)
    require(run.stop_reason == "trial budget spent: 3 trials, none passed its tests" and len(run.trials) == 3,
            f"never passing, max_trials=3: three trials and 'trial budget spent: 3 trials, none passed its tests', "
            f"got {len(run.trials)} trial(s), {run.stop_reason!r}")
    reflections = [e for e in log if e[0] == "reflect"]
    require(len(reflections) == 2, f"no reflection after the last trial (nothing would read it): expected 2 reflect "
                                   f"calls, got {len(reflections)}")
    require([e[2] for e in log if e[0] == "act"] == [None, None, None], "memory=None: the actor gets None every trial")

    ticks = iter([0.0, 1.0, 2.5, 9.0, 20.0, 30.0, 40.0])
    act, evaluate, reflect, log = _script(passing_at=None)
    run = fn("task", act=act, evaluate=evaluate, reflect=reflect, memory=_Memory(), max_trials=10, max_seconds=5,
             clock=lambda: next(ticks))
    require(run.stop_reason == "time budget spent: 9.0 s > max_seconds=5 after 2 trials" and len(run.trials) == 2,
            f"a clock reading 0, 1, 2.5, 9 with max_seconds=5: stop before trial 3 with 'time budget spent: 9.0 s > "
            f"max_seconds=5 after 2 trials', got {len(run.trials)} trial(s), {run.stop_reason!r}"
            "\n  hint: read clock() once at the start, then once before each trial")

    act, evaluate, reflect, log = _script(passing_at=None, budget_at=2)
    run = fn("task", act=act, evaluate=evaluate, reflect=reflect, memory=_Memory(), max_trials=5, max_seconds=60)
    require(len(run.trials) == 1 and run.stop_reason.startswith("model budget: budget exceeded"),
            f"the actor raising llm.BudgetExceeded at trial 2: one trial and stop_reason 'model budget: <message>', "
            f"got {len(run.trials)} trial(s), {run.stop_reason!r}")
    for bad in (0, -1, 2.0):
        try:
            fn("task", act=act, evaluate=evaluate, reflect=reflect, memory=None, max_trials=bad, max_seconds=60)
        except ValueError:
            continue
        raise CheckFailed(f"max_trials={bad!r} should raise ValueError (a positive int)")
    return "pass at once, pass at trial 3 with memory, trial budget, time budget, model budget, validation"


# --- 16.4 -----------------------------------------------------------------------------------------


def _pass_at_trial_reference(runs, max_trials):
    return [sum(r[min(t, len(r)) - 1] for r in runs) / len(runs) for t in range(1, max_trials + 1)]


@check
def pass_at_trial(fn):
    """``fn(runs, max_trials)``: the fraction solved by each trial, a stopped run keeping its last program."""
    require(callable(fn), f"pass_at_trial must be a function, got {type(fn).__name__}")
    cases = [([[True]], 1), ([[False, True]], 2), ([[True], [False, False, True]], 3),
             ([[False, True], [False, False, False], [True]], 4), ([[False, True, False]], 3)]
    for runs, max_trials in cases:
        got = fn(runs, max_trials)
        want = _pass_at_trial_reference(runs, max_trials)
        require(isinstance(got, list) and len(got) == max_trials,
                f"pass_at_trial({runs}, {max_trials}) should be a list of {max_trials} floats, got {_show(got)}")
        if any(not isinstance(g, (int, float)) or abs(g - w) > 1e-12 for g, w in zip(got, want, strict=False)):
            hint = ""
            if runs == [[True], [False, False, True]] and got[1] == 0.0:
                hint = ("\n  hint: a run that stopped early (it passed its tests) keeps submitting its last program; "
                        "use run[min(t, len(run)) - 1]")
            raise CheckFailed(f"pass_at_trial({runs}, {max_trials}) should be {want}, got {_show(got)}{hint}")
    for bad in ([], [[]], [[True, True, True]]):
        try:
            fn(bad, 2)
        except ValueError:
            continue
        raise CheckFailed(f"pass_at_trial({bad!r}, 2) should raise ValueError (no runs, an empty run, or a run "
                          "longer than max_trials)")
    return f"{len(cases)} sets of runs, early stops carried forward, bad input rejected"


# --- 16.5 -----------------------------------------------------------------------------------------


@check
def test_quality(fn):
    """``fn(internal, hidden)`` -> false-positive and false-negative rates of the self-written tests."""
    require(callable(fn), f"test_quality must be a function, got {type(fn).__name__}")
    cases = [
        ([True], [True], (0.0, 0.0, 0, 0)),
        ([True], [False], (1.0, 0.0, 1, 0)),
        ([False], [True], (0.0, 1.0, 0, 1)),
        ([True, True, True, False], [True, False, True, False], (1 / 3, 0.0, 1, 0)),
        ([True, False, False, True, True], [True, True, False, False, False], (2 / 3, 0.5, 2, 1)),
    ]
    keys = ("false_positive_rate", "false_negative_rate", "false_positives", "false_negatives")
    for internal, hidden, want in cases:
        got = fn(internal, hidden)
        require(isinstance(got, dict) and set(got) == set(keys),
                f"test_quality should return a dict with keys {keys}, got {_show(got)}")
        values = tuple(got[k] for k in keys)
        # rates are ratios of small integers: any correct float division lands within 1e-12
        if any(not isinstance(v, (int, float)) or not math.isclose(v, w, abs_tol=1e-12) for v, w in zip(values, want, strict=False)):
            hint = ""
            if len(internal) == 4 and math.isclose(values[0], 0.25, abs_tol=1e-12):
                hint = ("\n  hint: the false-positive rate is P(hidden fails | own tests pass): divide by the number of "
                        "programs the own tests accepted, not by all programs")
            raise CheckFailed(f"test_quality({internal}, {hidden}) should give {dict(zip(keys, want, strict=False))}, "
                              f"got {_show(got)}{hint}")
    got = fn([False, False], [False, False])
    require(got["false_positive_rate"] == 0.0, "with no program accepted by its own tests, the false-positive rate "
                                               f"is 0.0 (nothing was wrongly accepted), got {_show(got)}")
    for bad in (([True], [True, False]), ([], [])):
        try:
            fn(*bad)
        except ValueError:
            continue
        raise CheckFailed(f"test_quality{bad!r} should raise ValueError (lists of equal, non-zero length)")
    return f"{len(cases) + 1} cases, empty denominators, bad input rejected"


# --- 16.6 -----------------------------------------------------------------------------------------


class _Draft:
    """A program the scripted coder hands out; reading ``hidden_ok`` is cheating (the loop cannot see it)."""

    def __init__(self, name: str, examples_ok: bool):
        self.name, self.examples_ok = name, examples_ok

    @property
    def hidden_ok(self):
        raise CheckFailed("the executor loop read hidden_ok: it may only run the prompt's examples "
                          "(program.examples_ok); the hidden tests grade it afterwards")

    def __repr__(self):
        return f"<program {self.name}>"


class _ScriptedCoder:
    def __init__(self, verdicts):
        self.drafts = [_Draft(f"#{i + 1}", ok) for i, ok in enumerate(verdicts)]
        self.calls = 0

    def draft(self, programs):
        self.calls += 1
        if self.calls > len(self.drafts):
            raise CheckFailed(f"coder.draft was called {self.calls} times; the attempt budget allows fewer")
        return self.drafts[self.calls - 1]


@check
def retry_on_examples(fn):
    """``fn(programs, coder, attempts)`` drafts until the examples pass or the attempts run out."""
    require(callable(fn), f"retry_on_examples must be a function, got {type(fn).__name__}")
    cases = [  # (examples verdict of each draft the coder would give, attempts, drafts expected)
        ([True], 3, 1), ([False, False, True], 5, 3), ([False, False, False], 3, 3), ([False, True], 1, 1),
        ([False, True, True], 4, 2),
    ]
    for verdicts, attempts, want in cases:
        coder = _ScriptedCoder(verdicts)
        got = fn([], coder, attempts)
        require(isinstance(got, tuple) and len(got) == 2,
                f"retry_on_examples should return (program, attempts used), got {_show(got)}")
        program, used = got
        require(coder.calls == want, f"with drafts whose examples pass = {verdicts} and attempts={attempts}, "
                f"the coder should be asked {want} time(s), was asked {coder.calls}"
                + ("\n  hint: stop as soon as a draft passes the examples" if coder.calls > want else "")
                + ("\n  hint: a failing draft is worth another attempt while attempts remain"
                   if coder.calls < want else ""))
        require(program is coder.drafts[want - 1], f"the loop should keep the last draft "
                f"({coder.drafts[want - 1]!r}), got {_show(program)}")
        require(used == want, f"attempts used should be {want}, got {_show(used)}")
    try:
        fn([], _ScriptedCoder([True]), 0)
    except ValueError:
        pass
    else:
        raise CheckFailed("retry_on_examples(programs, coder, 0) should raise ValueError: at least one attempt")
    return f"{len(cases)} scripted coders: stops at the first draft that passes, keeps the last one, never over budget"


__all__ = ["run_tests", "episodic_memory", "reflexion_loop", "pass_at_trial", "test_quality", "retry_on_examples"]
