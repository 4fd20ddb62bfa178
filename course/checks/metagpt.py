"""Checks for notebook 12 (MetaGPT): typed design artifacts, the publish-subscribe pool, the
environment loop, and the bounded executable-feedback loop.

All comparisons are exact (artifacts, traces, call counts): no tolerances are involved. Each check
uses its own fakes (roles, test runners, fixers), so it tests one exercise at a time.
"""

from __future__ import annotations

import json

from .. import llm
from .core import CheckFailed, check, fields_of, require


def _show(value) -> str:
    return repr(value)[:300]


# --- 12.1 -----------------------------------------------------------------------------------------

GOOD = {"module": "roman", "functions": [{"name": "to_roman", "signature": "to_roman(n)", "requirements": [1, 2]},
                                         {"name": "from_roman", "signature": "from_roman(s)", "requirements": [3]}]}


def _with(**changes):
    design = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key[:2] == "fn" and key[2].isdigit():  # fn0_key / fn1_key: a function's field (None deletes it)
            index, field = int(key[2]), key[4:]
            if value is None:
                del design["functions"][index][field]
            else:
                design["functions"][index][field] = value
        else:
            design[key] = value
    return json.dumps(design)


def _expect_error(fn, text, n, must_contain, label, hint=""):
    try:
        got = fn(text, n)
    except ValueError as error:
        message = str(error)
        missing = [m for m in must_contain if m not in message]
        require(not missing, f"{label}: the ValueError should mention {missing}, got {message!r}{hint}")
        return
    raise CheckFailed(f"{label}: expected ValueError, got {_show(got)}{hint}")


@check
def parse_design(fn, design_cls, function_cls):
    """``fn(text, n_requirements)`` returns a Design or raises ValueError naming the problem."""
    require(callable(fn), f"parse_design must be a function, got {type(fn).__name__}")
    want = design_cls("roman", [function_cls("to_roman", "to_roman(n)", [1, 2]),
                                function_cls("from_roman", "from_roman(s)", [3])])
    got = fn(json.dumps(GOOD), 3)
    require(isinstance(got, design_cls), f"a valid design should give a Design, got {type(got).__name__}")
    require(fields_of(got) == fields_of(want), f"a valid design: expected {want!r}, got {_show(got)}")
    messy = "Here you go:\n```json\n" + json.dumps(GOOD)[:-2] + "],}\n```"
    got = fn(messy, 3)
    require(fields_of(got) == fields_of(want), f"JSON in a code fence with a trailing comma should still parse (use llm.parse_json); "
            f"got {_show(got)}")
    _expect_error(fn, "I would write two functions.", 3, [], "prose with no JSON")
    _expect_error(fn, _with(module="my-module"), 3, ["module"], "module 'my-module'",
                  "\n  hint: str.isidentifier() tells a valid module name")
    _expect_error(fn, _with(functions=[]), 3, ["empty"], "an empty functions list")
    _expect_error(fn, _with(fn1_signature=None), 3, ["functions[1]", "signature"], "functions[1] without a signature")
    _expect_error(fn, _with(fn0_requirements=["1", 2]), 3, ["functions[0]"], "requirement indices given as strings")
    _expect_error(fn, _with(fn1_requirements=[3, 5]), 4, ["5"], "index 5 with 4 requirements")
    _expect_error(fn, _with(fn1_requirements=[2]), 3, ["requirement 3", "not covered"],
                  "requirement 3 covered by no function",
                  "\n  hint: after reading the functions, check that every index 1..n_requirements appears")
    return "valid, repaired, and 7 kinds of invalid design"


# --- 12.2 -----------------------------------------------------------------------------------------


@check
def message_pool(pool_cls, envelope):
    """Publish-subscribe: kinds filter, own messages skipped, read once, late subscribers catch up."""
    pool = pool_cls()
    pool.subscribe("architect", ["PRD"])
    pool.subscribe("engineer", ["Design", "Tests"])
    require(pool.inbox("architect") == [], "an empty pool should give an empty inbox")
    prd, design, tests = envelope("PRD", "p", "pm"), envelope("Design", "d", "architect"), envelope("Tests", "t", "qa")
    for e in (prd, design, tests):
        pool.publish(e)
    require(list(pool.messages) == [prd, design, tests], "publish should keep every message in .messages, in order")
    got = pool.inbox("architect")
    require(got == [prd], f"architect subscribed to PRD: expected [PRD], got {_show(got)}")
    got = pool.inbox("engineer")
    require(got == [design, tests], f"engineer subscribed to Design and Tests: expected both in publish order, got "
            f"{_show(got)}")
    require(pool.inbox("engineer") == [], "a second inbox() call should be empty: messages count as read\n"
            "  hint: remember, per role, how far it has read")
    pool.subscribe("architect", ["PRD", "Design"])
    own, review = envelope("Design", "d2", "architect"), envelope("Design", "d3", "reviewer")
    pool.publish(own)
    pool.publish(review)
    got = pool.inbox("architect")
    require(got == [review], f"after subscribing to Design too, the architect should get the reviewer's new Design "
            f"but never its own: expected [{review!r}], got {_show(got)}\n  hint: skip messages whose sender is the role")
    late = envelope("Code", "c", "engineer")
    pool.publish(late)
    pool.subscribe("qa", ["Code", "PRD"])
    got = pool.inbox("qa")
    require(got == [prd, late], f"a role that subscribes late still reads earlier messages: expected [PRD, Code], got "
            f"{_show(got)}")
    try:
        pool.inbox("ceo")
    except KeyError as error:
        require("ceo" in str(error), f"the KeyError should name the role, got {error!r}")
    else:
        raise CheckFailed("inbox('ceo') for a role that never subscribed should raise KeyError")
    try:
        pool_cls().publish({"kind": "PRD"})
    except TypeError:
        pass
    else:
        raise CheckFailed("publish({'kind': 'PRD'}) should raise TypeError: only Envelopes go into the pool")
    return "filtering by kind, own messages, read once, late subscription, bad role, bad message"


# --- 12.3 -----------------------------------------------------------------------------------------


class _Pool:
    """A reference pool, so this check tests run_team alone."""

    def __init__(self):
        self.messages, self.subs, self.read = [], {}, {}

    def subscribe(self, role, kinds):
        self.subs[role] = set(kinds)
        self.read.setdefault(role, 0)

    def publish(self, e):
        self.messages.append(e)

    def inbox(self, role):
        start, self.read[role] = self.read[role], len(self.messages)
        return [m for m in self.messages[start:] if m.kind in self.subs[role] and m.sender != role]


class _Role:
    def __init__(self, envelope, name, watch, makes=(), error=None):
        self.envelope, self.name, self.watch, self.makes, self.error = envelope, name, tuple(watch), list(makes), error
        self.calls = []

    def act(self, inbox):
        self.calls.append([e.kind for e in inbox])
        if self.error is not None:
            raise self.error
        return [self.envelope(kind, f"{self.name}:{kind}", self.name) for kind in self.makes]


@check
def run_team(fn, envelope):
    """``fn(roles, pool, requirement, max_rounds=...)``: rounds, in-round visibility, and stop reasons."""
    require(callable(fn), f"run_team must be a function, got {type(fn).__name__}")
    pm = _Role(envelope, "pm", ["Requirement"], ["PRD"])
    architect = _Role(envelope, "architect", ["PRD"], ["Design"])
    pool = _Pool()
    trace, reason = fn([pm, architect], pool, "build it", max_rounds=5)
    first = pool.messages[0] if pool.messages else None
    require(first is not None and (first.kind, first.content, first.sender) == ("Requirement", "build it", "boss"),
            f"the first message should be Envelope('Requirement', 'build it', 'boss'), got {_show(first)}")
    require(trace == [(1, "pm", "PRD"), (1, "architect", "Design")],
            f"pm then architect: both publish in round 1 (the architect sees the PRD at once); trace was {trace!r}")
    require(reason == "done: no role had anything left to do", f"stop_reason should be 'done: no role had anything "
            f"left to do', got {reason!r}")

    pm = _Role(envelope, "pm", ["Requirement"], ["PRD"])
    architect = _Role(envelope, "architect", ["PRD"], ["Design"])
    trace, reason = fn([architect, pm], _Pool(), "build it", max_rounds=5)
    require(trace == [(1, "pm", "PRD"), (2, "architect", "Design")],
            f"architect listed first: it has nothing in round 1 and acts in round 2; trace was {trace!r}\n"
            "  hint: skip a role whose inbox is empty, and count rounds from 1")
    require(architect.calls == [["PRD"]], f"act() should only be called with a non-empty inbox; architect got "
            f"{architect.calls}")

    ping = _Role(envelope, "ping", ["Requirement", "Pong"], ["Ping"])
    pong = _Role(envelope, "pong", ["Ping"], ["Pong"])
    trace, reason = fn([ping, pong], _Pool(), "go", max_rounds=3)
    require(reason == "max_rounds=3 reached" and len(trace) == 6,
            f"two roles answering each other forever, max_rounds=3: expected 6 publications and 'max_rounds=3 "
            f"reached', got {len(trace)} and {reason!r}")

    broken = _Role(envelope, "architect", ["PRD"], error=llm.MalformedReply("architect gave no usable reply"))
    trace, reason = fn([_Role(envelope, "pm", ["Requirement"], ["PRD"]), broken], _Pool(), "go", max_rounds=4)
    require(reason == "architect failed: architect gave no usable reply" and trace == [(1, "pm", "PRD")],
            f"a role raising llm.MalformedReply: expected 'architect failed: architect gave no usable reply' after "
            f"[(1, 'pm', 'PRD')], got {reason!r} after {trace!r}\n  hint: catch llm.LLMError around role.act")
    broke = _Role(envelope, "pm", ["Requirement"], error=llm.BudgetExceeded("budget exceeded (token budget spent)"))
    trace, reason = fn([broke], _Pool(), "go", max_rounds=4)
    require(reason.startswith("pm failed: budget exceeded"), f"a budget overrun should stop with 'pm failed: budget "
            f"exceeded ...', got {reason!r}")
    return "pipeline order, round counting, endless ping-pong, malformed and budget failures"


# --- 12.4 -----------------------------------------------------------------------------------------


@check
def executable_feedback(fn, report_cls):
    """``fn(code, tests, fix, max_retries=, run_tests=)``: bounded retries, final code is the tested one."""
    require(callable(fn), f"executable_feedback must be a function, got {type(fn).__name__}")

    def scenario(passes_at, max_retries):
        tested, fixes = [], []

        def run(code, tests):
            tested.append(code)
            ok = passes_at is not None and code == f"v{passes_at}"
            return report_cls(1 if ok else 0, 0 if ok else 1, [] if ok else ["test_x"], f"report for {code}")

        def fix(code, report):
            fixes.append((code, report.output))
            return f"v{int(code[1:]) + 1}"

        code, reports = fn("v0", "tests", fix, max_retries=max_retries, run_tests=run)
        return code, reports, tested, fixes

    code, reports, tested, fixes = scenario(0, 3)
    require((code, len(reports), fixes) == ("v0", 1, []), f"tests pass at once: expected ('v0', 1 report, no fix), "
            f"got ({code!r}, {len(reports)} report(s), {len(fixes)} fix(es))")
    code, reports, tested, fixes = scenario(2, 3)
    require(code == "v2" and tested == ["v0", "v1", "v2"] and len(reports) == 3,
            f"pass on the third version with 3 retries: expected 'v2' after testing v0, v1, v2; got {code!r} after "
            f"testing {tested}")
    require(fixes == [("v0", "report for v0"), ("v1", "report for v1")],
            f"fix should get the failing code and its report, got {fixes!r}")
    code, reports, tested, fixes = scenario(None, 2)
    require(len(fixes) == 2 and len(reports) == 3, f"never passing with max_retries=2: expected 2 fixes and 3 "
            f"reports, got {len(fixes)} fixes and {len(reports)} reports")
    require(code == tested[-1] and reports[-1].output == f"report for {code}",
            f"the returned code ({code!r}) should be the last version tested ({tested[-1]!r})\n"
            "  hint: do not ask for a fix after the last allowed test run")
    code, reports, tested, fixes = scenario(None, 0)
    require((code, len(reports), len(fixes)) == ("v0", 1, 0), f"max_retries=0: one test run and no fix, got "
            f"{len(reports)} run(s) and {len(fixes)} fix(es)")
    return "pass at once, pass after fixes, never pass (bounded), no retries"
