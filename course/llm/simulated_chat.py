"""AutoGen's group chat with simulated agents whose mistakes are random at stated rates.

Notebook 11's offline policies decide which task each set-up solves. Here nothing does: on each
HumanEval problem (recognised by its task id)

* the **coder** is :class:`course.llm.simulated.SimulatedCoder`: each draft is the reference
  program with probability ``p``, otherwise one of the problem's one-edit mutants, at random;
* the **executor** runs the docstring's worked examples; whether a program passes them (and the
  hidden tests) was measured by running it (``course/results/humaneval_programs.csv``);
* the **critic** judges the current program: its verdict on hidden correctness is right with
  probability ``q`` (it rejects a wrong draft with probability ``q`` and passes a right one with
  probability ``q``). It reads the chat, so it always rejects a program the examples just failed.
  An approval ends the chat (AutoGen's termination message);
* the **manager** picks the next speaker: the right one with probability ``m``, otherwise one of
  the three uniformly at random (which may again be the right one). The right one is the protocol
  coder -> executor -> (examples fail: coder | pass: critic) -> (reject: coder | approve: stop).

A speaker picked out of turn acts as it would: a coder drafts again (and may replace a good
program with a wrong one), an executor re-runs what it has, a critic judges a program the examples
have not run yet. The chat also stops at a turn budget; the program kept is the last draft.

The pair (coder + executor, AutoGen's assistant + user proxy) alternates the two and stops when the
examples pass (the coder's TERMINATE costs a turn); a single agent writes one draft.

Cost is counted as a chat model would be billed: every model call (coder, critic, manager; the
executor has no model) reads the system message and the whole chat so far and writes its reply;
tokens are :func:`course.llm.chat.approx_tokens` of the real texts (the problem's prompt, the
reference program's source for every draft, the executor's measured feedback), plus the per-message
overhead. Randomness is ``random.Random`` seeded with strings, which gives the same draws on every
machine; each agent has its own stream per (seed, problem), so the k-th draft of a problem is the
same program in every set-up (common random numbers: differences come from the mechanism).
What this measures is the protocol at stated rates, not how often any real model errs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .chat import MESSAGE_OVERHEAD_TOKENS, approx_tokens
from .simulated import Program, SimulatedCoder, probability

__all__ = ["CODER", "EXECUTOR", "CRITIC", "SPEAKERS", "ChatTask", "ChatOutcome", "make_tasks", "right_speaker",
           "single_agent", "coder_executor", "group_chat", "run_mechanism", "MECHANISMS"]

CODER, EXECUTOR, CRITIC = "coder", "executor", "critic"
SPEAKERS = (CODER, EXECUTOR, CRITIC)

SYSTEM_CODER = ("You are a Python coder. Complete the function so that it passes its docstring's examples. "
                "Reply with the whole program in a ```python block; reply TERMINATE when the examples pass.")
SYSTEM_CRITIC = ("You are a critic. Read the task and the newest program. Reply 'APPROVED. TERMINATE' if it is "
                 "correct for every input the docstring describes, else 'REJECTED:' and what is wrong.")
SYSTEM_MANAGER = ("You manage a group chat between coder, executor and critic. "
                  'Who speaks next? Reply with JSON only: {"speaker": "<name>"}.')
APPROVAL = "APPROVED. TERMINATE"
REJECTION = "REJECTED: the program is wrong for some input the docstring describes; please rewrite it."
TERMINATE = "The examples pass. TERMINATE"
NOTHING_TO_RUN = "No code to run."
NOTHING_TO_CHECK = "There is no program to check yet."
MANAGER_REPLY = '{"speaker": "executor"}'


def _tokens(text: str) -> int:
    return approx_tokens(text) + MESSAGE_OVERHEAD_TOKENS


@dataclass(frozen=True)
class ChatTask:
    """One problem as the chat sees it: its programs (reference first) and its messages' sizes in tokens."""

    task_id: str
    programs: tuple[Program, ...]
    prompt_tokens: int              # the user's message: the HumanEval prompt
    draft_tokens: int               # a coder's draft: the reference program in a fence (mutants are one edit away)
    executor_tokens: tuple[int, ...]  # the executor's reply to each program, in the order of programs


def _executor_reply(task: ChatTask, program: Program) -> int:
    return task.executor_tokens[task.programs.index(program)]


def make_tasks(programs: dict[str, list[Program]], problems: dict[str, dict], feedback: dict[tuple[str, int], str],
               reference_source: Callable[[dict], str]) -> list[ChatTask]:
    """Chat tasks for every problem in ``programs``, in task-id order, with token sizes from the real texts.

    ``feedback[(task_id, index)]`` is the executor's first failing example for that program ("" when
    all passed), as measured by ``scripts/humaneval_programs.py``.
    """
    missing = sorted(set(programs) - set(problems))
    if missing:
        raise ValueError(f"no HumanEval problem for {missing[:3]} (expected every task id of the programs table)")
    tasks = []
    for task_id in sorted(programs, key=lambda t: int(t.split("/")[1])):
        problem, progs = problems[task_id], programs[task_id]
        draft = _tokens("```python\n" + reference_source(problem) + "\n```")
        replies = []
        for program in progs:
            if program.examples_ok:
                text = f"exitcode: 0 (ran successfully)\nCode output:\n{program.examples} of {program.examples} examples passed"
            else:
                text = "exitcode: 1 (an example failed)\nCode output:\n" + feedback.get((task_id, program.index), "")
            replies.append(_tokens(text))
        tasks.append(ChatTask(task_id, tuple(progs), _tokens(problem["prompt"]), draft, tuple(replies)))
    return tasks


@dataclass(frozen=True)
class ChatOutcome:
    """How one chat on one problem ended."""

    program: Program | None   # the program kept (the last draft), None if nobody drafted
    turns: int                # messages after the task (each agent's reply is one turn)
    model_calls: int
    tokens: int               # prompt + completion tokens of every model call
    stop: str                 # "approved", "examples passed", "one draft", "turn budget"

    @property
    def passed(self) -> bool:
        return self.program is not None and self.program.hidden_ok


class _Ledger:
    """The chat so far, as token sizes, and what its model calls cost."""

    def __init__(self, task: ChatTask):
        self.history = task.prompt_tokens
        self.tokens = self.calls = self.turns = 0

    def model_call(self, system: str, reply_tokens: int) -> None:
        self.tokens += _tokens(system) + self.history + reply_tokens
        self.calls += 1

    def say(self, reply_tokens: int) -> None:
        self.history += reply_tokens
        self.turns += 1


def _streams(task: ChatTask, seed: int, p: float) -> tuple[SimulatedCoder, random.Random, random.Random]:
    """The coder, critic and manager draws of one problem: separate streams, the same in every set-up."""
    coder = SimulatedCoder(p, random.Random(f"coder:{seed}:{task.task_id}"))
    return coder, random.Random(f"critic:{seed}:{task.task_id}"), random.Random(f"manager:{seed}:{task.task_id}")


def single_agent(task: ChatTask, coder: SimulatedCoder) -> ChatOutcome:
    """One model call, one draft, no feedback."""
    ledger = _Ledger(task)
    program = coder.draft(list(task.programs))
    ledger.model_call(SYSTEM_CODER, task.draft_tokens)
    ledger.say(task.draft_tokens)
    return ChatOutcome(program, ledger.turns, ledger.calls, ledger.tokens, "one draft")


def coder_executor(task: ChatTask, coder: SimulatedCoder, *, max_turns: int) -> ChatOutcome:
    """AutoGen's pair: draft, run the examples, draft again while they fail; TERMINATE once they pass."""
    _turns(max_turns)
    ledger, program = _Ledger(task), None
    while ledger.turns < max_turns:
        if program is not None and program.examples_ok:      # the executor's last reply said they pass
            ledger.model_call(SYSTEM_CODER, _tokens(TERMINATE))
            ledger.say(_tokens(TERMINATE))
            return ChatOutcome(program, ledger.turns, ledger.calls, ledger.tokens, "examples passed")
        program = coder.draft(list(task.programs))
        ledger.model_call(SYSTEM_CODER, task.draft_tokens)
        ledger.say(task.draft_tokens)
        if ledger.turns < max_turns:
            ledger.say(_executor_reply(task, program))
    return ChatOutcome(program, ledger.turns, ledger.calls, ledger.tokens, "turn budget")


def right_speaker(event: str) -> str:
    """Who should speak after ``event`` (the protocol the manager follows when it is right)."""
    follows = {"task": CODER, "draft": EXECUTOR, "examples failed": CODER, "examples passed": CRITIC,
               "rejected": CODER, "nothing to run": CODER, "nothing to check": CODER}
    if event not in follows:
        raise ValueError(f"unknown chat event {event!r}; expected one of {sorted(follows)}")
    return follows[event]


def group_chat(task: ChatTask, coder: SimulatedCoder, critic_rng: random.Random, manager_rng: random.Random | None,
               *, m: float, q: float, max_turns: int) -> ChatOutcome:
    """Coder, executor and critic, with a manager right with probability ``m`` (``manager_rng=None``: round-robin).

    A model-selected turn costs a manager call that reads the whole chat; round-robin costs nothing
    and cycles coder -> executor -> critic.
    """
    probability("m", m), probability("q", q), _turns(max_turns)
    ledger, program, event, failed_examples = _Ledger(task), None, "task", False
    for turn in range(max_turns):
        if manager_rng is None:
            speaker = SPEAKERS[turn % 3]
        else:
            right = right_speaker(event)
            speaker = right if manager_rng.random() < m else manager_rng.choice(SPEAKERS)
            ledger.model_call(SYSTEM_MANAGER, _tokens(MANAGER_REPLY))
        if speaker == CODER:
            program, event, failed_examples = coder.draft(list(task.programs)), "draft", False
            ledger.model_call(SYSTEM_CODER, task.draft_tokens)
            ledger.say(task.draft_tokens)
        elif speaker == EXECUTOR:
            if program is None:
                event = "nothing to run"
                ledger.say(_tokens(NOTHING_TO_RUN))
            else:
                failed_examples = not program.examples_ok
                event = "examples failed" if failed_examples else "examples passed"
                ledger.say(_executor_reply(task, program))
        else:
            if program is None:
                event = "nothing to check"
                ledger.model_call(SYSTEM_CRITIC, _tokens(NOTHING_TO_CHECK))
                ledger.say(_tokens(NOTHING_TO_CHECK))
                continue
            right_verdict = critic_rng.random() < q
            approves = not failed_examples and (program.hidden_ok == right_verdict)
            reply = _tokens(APPROVAL if approves else REJECTION)
            ledger.model_call(SYSTEM_CRITIC, reply)
            ledger.say(reply)
            if approves:
                return ChatOutcome(program, ledger.turns, ledger.calls, ledger.tokens, "approved")
            event = "rejected"
    return ChatOutcome(program, ledger.turns, ledger.calls, ledger.tokens, "turn budget")


def _turns(max_turns: int) -> int:
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"max_turns must be an integer >= 1, got {max_turns!r}")
    return max_turns


MECHANISMS = ("single agent", "coder + executor", "group, round-robin", "group, manager")


def run_mechanism(tasks: list[ChatTask], mechanism: str, *, p: float, seed: int, max_turns: int,
                  m: float | None = None, q: float | None = None) -> dict:
    """One set-up over every task for one seed: solved, pass rate, and its cost in turns, calls and tokens."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if mechanism.startswith("group") and q is None:
        raise ValueError(f"{mechanism!r} needs the critic's rate q")
    if mechanism == "group, manager" and m is None:
        raise ValueError("'group, manager' needs the manager's rate m")
    if not tasks:
        raise ValueError("tasks is empty")
    outcomes = []
    for task in tasks:
        coder, critic_rng, manager_rng = _streams(task, seed, p)
        if mechanism == "single agent":
            outcomes.append(single_agent(task, coder))
        elif mechanism == "coder + executor":
            outcomes.append(coder_executor(task, coder, max_turns=max_turns))
        else:
            manager = manager_rng if mechanism == "group, manager" else None
            outcomes.append(group_chat(task, coder, critic_rng, manager, m=1.0 if m is None else m, q=q,
                                       max_turns=max_turns))
    solved = sum(o.passed for o in outcomes)
    return {"solved": solved, "problems": len(tasks), "pass_rate": solved / len(tasks),
            "turns": sum(o.turns for o in outcomes), "model_calls": sum(o.model_calls for o in outcomes),
            "tokens": sum(o.tokens for o in outcomes),
            "approved": sum(o.stop == "approved" for o in outcomes),
            "turn_budget": sum(o.stop == "turn budget" for o in outcomes)}
