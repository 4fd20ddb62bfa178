"""The notebook-12 checks pass on correct code and fail on plausible wrong code; the task set is
consistent (reference code passes its hidden tests, the written-in drafts fail where the module says)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from course import llm
from course.checks import metagpt as check
from course.checks.core import RESULTS
from course.llm.policies import metagpt as tasks


def passed() -> bool:
    return RESULTS[-1].passed


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 12.x")


@dataclass
class FunctionSpec:
    name: str
    signature: str
    requirements: list


@dataclass
class Design:
    module: str
    functions: list


@dataclass
class Envelope:
    kind: str
    content: object
    sender: str


@dataclass
class Report:
    passed: int
    failed: int
    failing: list
    output: str

    @property
    def ok(self):
        return self.failed == 0 and self.passed > 0


def parse_design(text, n_requirements, check_coverage=True):
    parsed = llm.parse_json(text, required={"module": str, "functions": list})
    if not parsed.ok:
        raise ValueError(parsed.error)
    module, raw = parsed.value["module"], parsed.value["functions"]
    if not module.isidentifier():
        raise ValueError(f"module {module!r} is not valid")
    if not raw:
        raise ValueError("functions is empty")
    functions = []
    for i, f in enumerate(raw):
        problem = llm.parsing.validate(f, {"name": str, "signature": str, "requirements": list})
        if problem:
            raise ValueError(f"functions[{i}]: {problem}")
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in f["requirements"]):
            raise ValueError(f"functions[{i}]: requirements must be integers")
        bad = [r for r in f["requirements"] if not 1 <= r <= n_requirements]
        if bad:
            raise ValueError(f"functions[{i}]: requirement {bad[0]} out of range")
        functions.append(FunctionSpec(f["name"], f["signature"], list(f["requirements"])))
    covered = {r for f in functions for r in f.requirements}
    for r in range(1, n_requirements + 1):
        if check_coverage and r not in covered:
            raise ValueError(f"requirement {r} is not covered by any function")
    return Design(module, functions)


class MessagePool:
    def __init__(self, skip_own=True):
        self.messages, self.subscriptions, self.read, self.skip_own = [], {}, {}, skip_own

    def subscribe(self, role, kinds):
        self.subscriptions[role] = set(kinds)
        self.read.setdefault(role, 0)

    def publish(self, envelope):
        if not isinstance(envelope, Envelope):
            raise TypeError("Envelope expected")
        self.messages.append(envelope)

    def inbox(self, role):
        if role not in self.subscriptions:
            raise KeyError(role)
        start, self.read[role] = self.read[role], len(self.messages)
        return [m for m in self.messages[start:]
                if m.kind in self.subscriptions[role] and not (self.skip_own and m.sender == role)]


def run_team(roles, pool, requirement, *, max_rounds, catch=True):
    for role in roles:
        pool.subscribe(role.name, role.watch)
    pool.publish(Envelope("Requirement", requirement, "boss"))
    trace = []
    for round_number in range(1, max_rounds + 1):
        published = 0
        for role in roles:
            inbox = pool.inbox(role.name)
            if not inbox:
                continue
            try:
                outputs = role.act(inbox)
            except llm.LLMError as error:
                if not catch:
                    raise
                return trace, f"{role.name} failed: {error}"
            for envelope in outputs:
                pool.publish(envelope)
                trace.append((round_number, role.name, envelope.kind))
                published += 1
        if published == 0:
            return trace, "done: no role had anything left to do"
    return trace, f"max_rounds={max_rounds} reached"


def executable_feedback(code, tests, fix, *, max_retries, run_tests, fix_after_last=False):
    reports = []
    for attempt in range(max_retries + 1):
        report = run_tests(code, tests)
        reports.append(report)
        if report.ok:
            break
        if attempt == max_retries and not fix_after_last:
            break
        code = fix(code, report)
    return code, reports


def test_parse_design_passes_and_fails_on_stub_and_without_coverage():
    check.parse_design(parse_design, Design, FunctionSpec)
    assert passed()
    check.parse_design(stub, Design, FunctionSpec)
    assert not passed()
    check.parse_design(lambda t, n: parse_design(t, n, check_coverage=False), Design, FunctionSpec)
    assert not passed() and "covered by no function" in RESULTS[-1].message


def test_message_pool_passes_and_rejects_delivering_own_messages():
    check.message_pool(MessagePool, Envelope)
    assert passed()

    class Stub:
        def __init__(self):
            stub()

    check.message_pool(Stub, Envelope)
    assert not passed()
    check.message_pool(lambda: MessagePool(skip_own=False), Envelope)
    assert not passed() and "never its own" in RESULTS[-1].message


def test_run_team_passes_and_rejects_letting_errors_escape():
    check.run_team(run_team, Envelope)
    assert passed()
    check.run_team(stub, Envelope)
    assert not passed()
    check.run_team(lambda *a, **k: run_team(*a, **k, catch=False), Envelope)
    assert not passed()


def test_executable_feedback_passes_and_rejects_an_untested_final_fix():
    check.executable_feedback(executable_feedback, Report)
    assert passed()
    check.executable_feedback(stub, Report)
    assert not passed()
    check.executable_feedback(lambda *a, **k: executable_feedback(*a, **k, fix_after_last=True), Report)
    assert not passed()


def _hidden(task, code):
    result = llm.run_python(tasks.RUNNER, files={f"{task.module}.py": code, "test_module.py": task.hidden_tests},
                            timeout_s=10)
    p, f, _ = tasks.parse_report(result.stdout)
    return f == 0 and p > 0


@pytest.mark.parametrize("task", tasks.TASKS, ids=lambda t: t.id)
def test_reference_code_passes_hidden_and_qa_tests(task):
    assert _hidden(task, task.correct)
    qa = llm.run_python(tasks.RUNNER, files={f"{task.module}.py": task.correct, "test_module.py": task.qa_tests})
    assert tasks.parse_report(qa.stdout)[1] == 0


def test_written_in_mistakes_are_where_the_module_docstring_says():
    unstructured_ok = [t.id for t in tasks.TASKS if _hidden(t, t.unstructured)]
    draft_ok = [t.id for t in tasks.TASKS if _hidden(t, t.draft)]
    assert unstructured_ok == ["bank"]
    assert draft_ok == ["rle", "roman", "bank"]
    for task in tasks.TASKS:
        for fix in task.fixes.values():
            assert _hidden(task, fix), task.id


def test_parse_report_counts_a_crash_as_a_failure():
    assert tasks.parse_report("PASS test_a\nFAIL test_b: x\n1 passed, 1 failed") == (1, 1, ["test_b"])
    assert tasks.parse_report("Traceback ...\nImportError: no module") == (0, 1, ["<no summary: the tests did not run>"])
