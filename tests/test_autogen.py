"""The notebook-11 checks pass on correct code and fail on plausible wrong code; the offline policies
behave as the notebook says (the measured table is asserted in the notebook itself, under nbval)."""

from __future__ import annotations

import re
from dataclasses import dataclass


from course import llm
from course.checks import autogen as check
from course.checks.core import RESULTS
from course.llm.policies import autogen as tasks


def passed() -> bool:
    return RESULTS[-1].passed


# --- reference solutions (as in solutions/11_autogen.ipynb) ---------------------------------------

def extract_code(text):
    return [code for language, code in llm.code_blocks(text) if language in ("python", "py", "")]


def execute_code_blocks(text, run, extract=extract_code):
    blocks = extract(text)
    if not blocks:
        return None
    output, result = "", None
    for code in blocks:
        result = run(code)
        output += result.stdout
        if not result.ok:
            output += result.stderr
            break
    return f"exitcode: {0 if result.ok else 1} ({result.message})\nCode output:\n{output.strip()}"


@dataclass
class ChatResult:
    history: list
    stop_reason: str


def is_termination(text):
    return text.rstrip().endswith("TERMINATE")


def run_chat(initiator, recipient, message, *, max_turns, is_termination=is_termination, check_first=False):
    history = [{"name": initiator.name, "content": message}]
    speakers, turns = [recipient, initiator], 0
    while True:
        agent = speakers[turns % 2]
        try:
            reply = agent.generate_reply(history)
        except llm.BudgetExceeded as error:
            return ChatResult(history, f"budget: {error}")
        if reply is None:
            return ChatResult(history, f"{agent.name} ended the chat")
        history.append({"name": agent.name, "content": reply})
        turns += 1
        if check_first and turns >= max_turns:
            return ChatResult(history, f"max_turns={max_turns} reached")
        if is_termination(reply):
            return ChatResult(history, f"{agent.name} sent a termination message")
        if turns >= max_turns:
            return ChatResult(history, f"max_turns={max_turns} reached")


def select_speaker(manager, names, history, last, retries=1):
    after = names[(names.index(last) + 1) % len(names)] if last in names else names[0]
    if manager is None:
        return after, "round-robin"
    prompt = [llm.system("You manage a group chat between " + ", ".join(names) + ".")]
    prompt += [llm.user(h["content"], name=h["name"]) for h in history]
    prompt.append(llm.user(tasks.SPEAKER_PROMPT))
    try:
        value, _ = llm.chat_json(manager, prompt, required={"speaker": str}, max_retries=retries)
    except llm.MalformedReply as error:
        return after, f"round-robin fallback: {error}"
    if value["speaker"] not in names:
        return after, f"round-robin fallback: unknown speaker {value['speaker']!r}"
    return value["speaker"], "model"


EXIT = "exit"


def human_reply(mode, incoming, input_fn, is_termination=is_termination):
    if mode not in ("NEVER", "ALWAYS", "TERMINATE"):
        raise ValueError(mode)
    if mode == "NEVER" or (mode == "TERMINATE" and not is_termination(incoming)):
        return None
    answer = input_fn("> ")
    if not answer.strip():
        return None
    return EXIT if answer.strip().lower() == EXIT else answer


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 11.x")


# --- 11.1 ---

def test_extract_code_passes_on_the_solution_and_fails_on_the_stub():
    check.extract_code(extract_code)
    assert passed()
    check.extract_code(stub)
    assert not passed() and "not implemented" in RESULTS[-1].message


def test_extract_code_rejects_a_greedy_pattern_and_other_languages():
    greedy = lambda text: re.findall(r"```(?:python|py)?\n(.*)```", text, re.S)
    check.extract_code(greedy)
    assert not passed() and "greedy" in RESULTS[-1].message
    check.extract_code(lambda text: [code for _, code in llm.code_blocks(text)])
    assert not passed() and "skip blocks tagged with another language" in RESULTS[-1].message


# --- 11.2 ---

def test_execute_code_blocks_passes_and_fails_on_the_stub():
    check.execute_code_blocks(execute_code_blocks)
    assert passed()
    check.execute_code_blocks(stub)
    assert not passed()


def test_execute_code_blocks_rejects_running_on_after_a_failure_and_dropping_stderr():
    def keeps_going(text, run):
        results = [run(c) for c in extract_code(text)] or None
        if results is None:
            return None
        ok = all(r.ok for r in results)
        return f"exitcode: {0 if ok else 1} ({results[-1].message})\nCode output:\n" + "".join(
            r.stdout + ("" if r.ok else r.stderr) for r in results).strip()

    check.execute_code_blocks(keeps_going)
    assert not passed() and "nothing else should run" in RESULTS[-1].message

    def no_stderr(text, run):
        blocks = extract_code(text)
        if not blocks:
            return None
        out, r = "", None
        for code in blocks:
            r = run(code)
            out += r.stdout
            if not r.ok:
                break
        return f"exitcode: {0 if r.ok else 1} ({r.message})\nCode output:\n{out.strip()}"

    check.execute_code_blocks(no_stderr)
    assert not passed() and "stderr" in RESULTS[-1].message


# --- 11.3 ---

def test_run_chat_passes_and_fails_on_the_stub():
    check.run_chat(run_chat, ChatResult)
    assert passed()
    check.run_chat(stub, ChatResult)
    assert not passed()


def test_run_chat_rejects_max_turns_before_termination_and_uncaught_budget():
    check.run_chat(lambda *a, **k: run_chat(*a, **k, check_first=True), ChatResult)
    assert not passed() and "termination message on the last allowed turn" in RESULTS[-1].message

    def lets_budget_escape(initiator, recipient, message, *, max_turns):
        history = [{"name": initiator.name, "content": message}]
        for turn in range(max_turns):
            agent = [recipient, initiator][turn % 2]
            reply = agent.generate_reply(history)
            if reply is None:
                return ChatResult(history, f"{agent.name} ended the chat")
            history.append({"name": agent.name, "content": reply})
            if is_termination(reply):
                return ChatResult(history, f"{agent.name} sent a termination message")
        return ChatResult(history, f"max_turns={max_turns} reached")

    check.run_chat(lets_budget_escape, ChatResult)
    assert not passed() and "BudgetExceeded" in RESULTS[-1].message


# --- 11.4 ---

def test_select_speaker_passes_and_fails_on_the_stub():
    check.select_speaker(select_speaker)
    assert passed()
    check.select_speaker(stub)
    assert not passed()


def test_select_speaker_rejects_no_retry_and_trusting_unknown_names():
    check.select_speaker(lambda *a: select_speaker(*a, retries=0))
    assert not passed() and "malformed first answer" in RESULTS[-1].message

    def trusting(manager, names, history, last):
        name, how = select_speaker(manager, names, history, last)
        if how.startswith("round-robin fallback: unknown"):
            return "ceo", "model"
        return name, how

    check.select_speaker(trusting)
    assert not passed() and "ceo" in RESULTS[-1].message


# --- 11.5 ---

def test_human_reply_passes_and_fails_on_the_stub():
    check.human_reply(human_reply, EXIT)
    assert passed()
    check.human_reply(stub, EXIT)
    assert not passed()


def test_human_reply_rejects_asking_in_terminate_mode_every_time():
    def always_asks(mode, incoming, input_fn):
        return human_reply("ALWAYS" if mode == "TERMINATE" else mode, incoming, input_fn)

    check.human_reply(always_asks, EXIT)
    assert not passed() and "TERMINATE mode asks only" in RESULTS[-1].message


# --- the offline policies --------------------------------------------------------------------------

def test_task_answers_are_what_the_reference_programs_print():
    for task in tasks.TASKS:
        final = task.fixes.get("silent") or task.fixes.get("timeout") or next(iter(task.fixes.values()), task.draft)
        result = llm.run_python(final, timeout_s=10)
        assert result.ok, (task.id, result.message)
        assert int(result.stdout.split()[-1]) == task.answer, task.id
        if task.check:
            assert int(llm.run_python(task.check, timeout_s=10).stdout.split()[-1]) == task.answer, task.id


def test_policies_refuse_unknown_tasks_honestly():
    reply = tasks.assistant_policy([llm.system(tasks.SYSTEM_ASSISTANT), llm.user("Write me a poem.")])
    assert "do not recognise this request" in reply and reply.endswith("TERMINATE")


def test_manager_answers_malformed_once_on_digit_sum_only():
    history = [llm.system("roles"), llm.user(tasks.TASKS_BY_ID["digit_sum"].statement, name="user"),
               llm.user(tasks.SPEAKER_PROMPT)]
    assert not llm.parse_json(tasks.manager_policy(history)).ok
    history += [llm.assistant("x"), llm.user("Your last reply could not be used: no JSON found.")]
    assert llm.parse_json(tasks.manager_policy(history)).value == {"speaker": "assistant"}
