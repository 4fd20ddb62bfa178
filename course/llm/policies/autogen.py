"""Notebook 11 (AutoGen): ten math-by-code tasks and the offline assistant, verifier and manager.

The tasks are Project-Euler-style problems (the paper's A1 case is MATH problems solved by writing
and running code). For each task the assistant policy has a first draft, and fixes keyed by what
went wrong. The drafts carry the mistakes on purpose:

* correct first time: ``multiples``, ``even_fib``, ``triangle``, ``triplet``;
* crash or hang that an executor reveals: ``digit_sum`` (TypeError), ``collatz`` (infinite loop:
  the time limit stops it), ``lattice`` (NameError);
* silently wrong (runs fine, prints a wrong number): ``primes`` (counts 1 as prime),
  ``amicable`` (counts perfect numbers), ``self_powers`` (first ten digits, not last).

Without tools the assistant answers from "memory": ``direct`` answers written into each task,
right on the three best-known problems only. The verifier has an independent cross-check program
for every task except ``self_powers``. The manager (speaker selection) answers with malformed JSON
once, on ``digit_sum``, so the notebook shows the retry path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..chat import Message
from . import speaker

ASSISTANT = "assistant"
EXECUTOR = "executor"
VERIFIER = "verifier"

SYSTEM_SOLO = ("You are a helpful assistant. You cannot run code. Solve the problem and end your reply with "
               "'The answer is <number>.' and then TERMINATE.")
SYSTEM_ASSISTANT = ("You are a helpful AI assistant. Solve tasks by writing one Python code block (```python) that "
                    "prints the result; the user will run it and reply with 'exitcode: ...' and the output. If it "
                    "fails, fix the code. When the output answers the task, reply 'The answer is <number>.' "
                    "and then TERMINATE.")
SYSTEM_ASSISTANT_GROUP = (SYSTEM_ASSISTANT + " A verifier checks results: after your code has printed a result, "
                          "say 'Result: <number>. Verifier, please check.' and answer only after it says VERIFIED; "
                          "if it says MISMATCH, find the bug.")
SYSTEM_VERIFIER = ("You are a verifier. When a solution prints a result, write an independent Python check "
                   "(```python) that computes the same quantity a different way. When the check has run, reply "
                   "'VERIFIED: <number>' if both agree, or 'MISMATCH: check gives <x>, solution gave <y>'.")


@dataclass(frozen=True)
class MathTask:
    id: str
    statement: str
    answer: int
    draft: str
    fixes: dict = field(default_factory=dict)  # error kind ("TypeError", "timeout", "silent", ...) -> code
    direct: int = 0  # the no-tools answer the policy gives
    check: str | None = None  # the verifier's independent cross-check program

    def correct(self, text: str | None) -> bool:
        value = final_answer(text or "")
        return value is not None and value == self.answer


TASKS: list[MathTask] = [
    MathTask("multiples", "Find the sum of all the natural numbers below 1000 that are multiples of 3 or 5.", 233168,
             "print(sum(n for n in range(1000) if n % 3 == 0 or n % 5 == 0))", direct=233168,
             check="def s(k, n=999):\n    m = n // k\n    return k * m * (m + 1) // 2\nprint(s(3) + s(5) - s(15))"),
    MathTask("even_fib", "Find the sum of the even-valued Fibonacci numbers that do not exceed four million.", 4613732,
             "a, b, total = 1, 2, 0\nwhile b <= 4_000_000:\n    if b % 2 == 0:\n        total += b\n    a, b = b, a + b\n"
             "print(total)", direct=4613732,
             check="e0, e1, total = 2, 8, 2\nwhile e1 <= 4_000_000:\n    total += e1\n    e0, e1 = e1, 4 * e1 + e0\n"
                   "print(total)"),
    MathTask("digit_sum", "What is the sum of the digits of the number 2**1000?", 1366,
             "print(sum(str(2 ** 1000)))",
             {"TypeError": "print(sum(int(d) for d in str(2 ** 1000)))"}, direct=1372,
             check="n, total = 1 << 1000, 0\nwhile n:\n    n, r = divmod(n, 10)\n    total += r\nprint(total)"),
    MathTask("primes", "How many prime numbers are there below 10000?", 1229,
             "n = 10000\nis_prime = [True] * n\nfor i in range(2, int(n ** 0.5) + 1):\n    if is_prime[i]:\n"
             "        for j in range(i * i, n, i):\n            is_prime[j] = False\nprint(sum(is_prime[1:]))",
             {"silent": "n = 10000\nis_prime = [True] * n\nis_prime[0] = is_prime[1] = False\n"
                        "for i in range(2, int(n ** 0.5) + 1):\n    if is_prime[i]:\n"
                        "        for j in range(i * i, n, i):\n            is_prime[j] = False\nprint(sum(is_prime))"},
             direct=1250,
             check="print(sum(all(k % p for p in range(2, int(k ** 0.5) + 1)) for k in range(2, 10000)))"),
    MathTask("collatz", "Which starting number under 10000 produces the longest Collatz chain?", 6171,
             "def length(n):\n    steps = 1\n    while n != 0:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
             "        steps += 1\n    return steps\nprint(max(range(1, 10000), key=length))",
             {"timeout": "def length(n):\n    steps = 1\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
                         "        steps += 1\n    return steps\nprint(max(range(1, 10000), key=length))"},
             direct=9999,
             check="cache = {1: 1}\ndef length(n):\n    path = []\n    while n not in cache:\n        path.append(n)\n"
                   "        n = 3 * n + 1 if n % 2 else n // 2\n    c = cache[n]\n    for m in reversed(path):\n"
                   "        c += 1\n        cache[m] = c\n    return cache[path[0]] if path else c\n"
                   "print(max(range(1, 10000), key=length))"),
    MathTask("triangle", "What is the first triangle number to have over 100 divisors?", 73920,
             "def divisors(t):\n    count, i = 0, 1\n    while i * i <= t:\n        if t % i == 0:\n"
             "            count += 1 if i * i == t else 2\n        i += 1\n    return count\n"
             "k = t = 0\nwhile True:\n    k += 1\n    t += k\n    if divisors(t) > 100:\n        break\nprint(t)",
             direct=76576500,
             check="def tau(n):\n    out, p = 1, 2\n    while p * p <= n:\n        e = 0\n        while n % p == 0:\n"
                   "            n //= p\n            e += 1\n        out *= e + 1\n        p += 1\n"
                   "    return out * (2 if n > 1 else 1)\nk = 1\nwhile tau(k * (k + 1) // 2) <= 100:\n    k += 1\n"
                   "print(k * (k + 1) // 2)"),
    MathTask("triplet", "There is exactly one Pythagorean triplet a < b < c with a + b + c = 1000. Find the product abc.",
             31875000,
             "for a in range(1, 1000):\n    for b in range(a + 1, 1000 - a):\n        c = 1000 - a - b\n"
             "        if a * a + b * b == c * c:\n            print(a * b * c)", direct=31875000,
             check="for m in range(2, 23):\n    for n in range(1, m):\n        s = 2 * m * (m + n)\n"
                   "        if 1000 % s == 0:\n            k = 1000 // s\n            a, b, c = k * (m * m - n * n), k * 2 * m * n, "
                   "k * (m * m + n * n)\n            print(a * b * c)"),
    MathTask("lattice", "How many monotone lattice paths (right and down only) cross a 20 by 20 grid from one corner "
             "to the opposite one?", 137846528820,
             "print(comb(40, 20))", {"NameError": "from math import comb\nprint(comb(40, 20))"}, direct=35345263800,
             check="row = [1] * 21\nfor _ in range(20):\n    for j in range(1, 21):\n        row[j] += row[j - 1]\n"
                   "print(row[20])"),
    MathTask("amicable", "Evaluate the sum of all the amicable numbers under 10000.", 31626,
             "def d(n):\n    return sum(i for i in range(1, n) if n % i == 0) if n < 2 else "
             "1 + sum(i + n // i * (i != n // i) for i in range(2, int(n ** 0.5) + 1) if n % i == 0)\n"
             "print(sum(a for a in range(2, 10000) if d(d(a)) == a))",
             {"silent": "def d(n):\n    return 1 + sum(i + n // i * (i != n // i) for i in range(2, int(n ** 0.5) + 1) "
                        "if n % i == 0)\nprint(sum(a for a in range(2, 10000) if d(a) != a and d(d(a)) == a))"},
             direct=31626 + 2, check="N = 30000\ns = [0] * N\nfor i in range(1, N // 2):\n    for j in range(2 * i, N, i):\n"
                                     "        s[j] += i\nprint(sum(a for a in range(2, 10000) if s[a] < N and s[a] != a "
                                     "and s[s[a]] == a))"),
    MathTask("self_powers", "Find the last ten digits of the series 1**1 + 2**2 + ... + 1000**1000.", 9110846700,
             "total = sum(i ** i for i in range(1, 1001))\nprint(str(total)[:10])",
             {"silent": "total = sum(pow(i, i, 10 ** 10) for i in range(1, 1001)) % 10 ** 10\nprint(f'{total:010d}')"},
             direct=9110846700 - 1000),
]
TASKS_BY_ID = {t.id: t for t in TASKS}

_ANSWER = re.compile(r"answer is\s*\**\s*(-?[\d,]+)", re.IGNORECASE)


def final_answer(text: str) -> int | None:
    """The integer in 'The answer is N', or None."""
    match = _ANSWER.search(text or "")
    return int(match.group(1).replace(",", "")) if match else None


def find_task(messages: list[Message]) -> MathTask | None:
    for m in messages:
        for task in TASKS:
            if task.statement in m.content:
                return task
    return None


def _code(text: str) -> str:
    return f"```python\n{text}\n```"


def _last_number(text: str) -> int | None:
    numbers = re.findall(r"-?\d+", text.split("\n", 1)[1] if "\n" in text else "")
    return int(numbers[-1]) if numbers else None


def _error_kind(feedback: str) -> str:
    if "timed out" in feedback or "time limit" in feedback:
        return "timeout"
    names = re.findall(r"\b([A-Z][A-Za-z]*Error)\b", feedback)
    return names[-1] if names else "error"


def _written_code(messages: list[Message], name: str) -> list[str]:
    return [m.content for m in messages if speaker(m) == name and "```python" in m.content]


def _ran_code_by(messages: list[Message], index: int) -> str | None:
    """Who wrote the code that the executor's message at ``index`` reports on."""
    for m in reversed(messages[:index]):
        if "```python" in m.content:
            return speaker(m)
    return None


def _last_result(messages: list[Message]) -> int | None:
    """The number the assistant's most recent successful run printed."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.content.startswith("exitcode: 0") and _ran_code_by(messages, i) == ASSISTANT:
            return _last_number(m.content)
    return None


UNKNOWN = ("I am the course's offline assistant policy, written for the tasks in course.llm.policies.autogen; "
           "I do not recognise this request, so I cannot solve it. TERMINATE")


def assistant_policy(messages: list[Message]) -> str:
    """The assistant: draft code, fix it from executor feedback or verifier objections, then answer."""
    task = find_task(messages)
    if task is None:
        return UNKNOWN
    system = messages[0].content if messages[0].role == "system" else ""
    if "cannot run code" in system:
        return f"Thinking it through without running code: the answer is {task.direct}.\nTERMINATE"
    group = "verifier" in system.lower()
    written = _written_code(messages, ASSISTANT)
    if not written:
        return f"I will compute this with Python.\n{_code(task.draft)}"
    # react to the newest event (a run of my code, or a verdict) that I have not answered yet;
    # chatter in between ("No code to run.", "Nothing new to check.") is ignored
    events = [i for i, m in enumerate(messages)
              if (speaker(m) == EXECUTOR and m.content.startswith("exitcode:") and _ran_code_by(messages, i) == ASSISTANT)
              or (speaker(m) == VERIFIER and m.content.startswith(("MISMATCH", "VERIFIED", "NO CHECK")))]
    if not events or any(speaker(m) == ASSISTANT for m in messages[events[-1] + 1:]):
        return "Waiting for the result."  # e.g. round-robin gave me a turn while a check is pending
    last = messages[events[-1]]
    text = last.content
    if speaker(last) == EXECUTOR:
        if text.startswith("exitcode: 0"):
            value = _last_number(text)
            if value is None:
                return "The code printed nothing I can use. TERMINATE"
            if group:
                return f"Result: {value}. Verifier, please check."
            return f"The answer is {value}.\nTERMINATE"
        kind = _error_kind(text)
        fix = task.fixes.get(kind)
        if fix and _code(fix) not in "\n".join(written):
            reason = "it ran past the time limit, so the loop never ends" if kind == "timeout" else f"it raised {kind}"
            return f"The code failed ({reason}). Here is a fix.\n{_code(fix)}"
        return "I could not fix the error. TERMINATE"
    if text.startswith("MISMATCH"):
        fix = task.fixes.get("silent")
        if fix and _code(fix) not in "\n".join(written):
            return f"The verifier disagrees, so my code has a bug. Corrected version:\n{_code(fix)}"
        return f"I re-checked and keep my result: the answer is {_last_result(messages)}.\nTERMINATE"
    if text.startswith("VERIFIED"):
        return f"Verified. The answer is {_last_result(messages)}.\nTERMINATE"
    return f"No independent check exists; the answer is {_last_result(messages)}.\nTERMINATE"


def verifier_policy(messages: list[Message]) -> str:
    """The verifier: cross-check the assistant's printed result with an independent program."""
    task = find_task(messages)
    if task is None:
        return UNKNOWN
    last = messages[-1]
    index = len(messages) - 1
    if speaker(last) == EXECUTOR and last.content.startswith("exitcode:") and _ran_code_by(messages, index) == VERIFIER:
        mine = _last_number(last.content) if last.content.startswith("exitcode: 0") else None
        theirs = _last_result(messages)
        if mine is None:
            return "NO CHECK: my check did not run; I cannot confirm the result."
        if mine == theirs:
            return f"VERIFIED: {mine}"
        return f"MISMATCH: check gives {mine}, solution gave {theirs}"
    result = _last_result(messages)
    latest = max((i for i, m in enumerate(messages) if m.content.startswith("exitcode: 0")
                  and _ran_code_by(messages, i) == ASSISTANT), default=None)
    handled = latest is not None and any(speaker(m) == VERIFIER for m in messages[latest + 1:])
    if result is None or handled:
        return "Nothing new to check."
    if task.check is None:
        return "NO CHECK: I have no independent way to compute this; accepting the result."
    return f"An independent check of {result}:\n{_code(task.check)}"


SPEAKER_PROMPT = 'Who speaks next? Reply with JSON only: {"speaker": "<name>"}.'


def manager_policy(messages: list[Message]) -> str:
    """Speaker selection for the group: reads who spoke last and what they said; JSON reply."""
    task = find_task(messages)
    if messages[-1].content.startswith("Your last reply could not be used"):
        history = [m for m in messages[:-2] if m.role != "system" and m.content != SPEAKER_PROMPT]
    else:
        history = [m for m in messages if m.role != "system" and m.content != SPEAKER_PROMPT]
        if task is not None and task.id == "digit_sum" and len(history) == 1:
            return "The assistant should go first, I think."  # malformed on purpose: no JSON
    last = history[-1]
    who, text = speaker(last), last.content
    if who == ASSISTANT:
        choice = EXECUTOR if "```python" in text else VERIFIER
    elif who == EXECUTOR:
        ran = None
        for m in reversed(history[:-1]):
            if "```python" in m.content:
                ran = speaker(m)
                break
        choice = VERIFIER if ran == VERIFIER or text.startswith("exitcode: 0") else ASSISTANT
    elif who == VERIFIER:
        choice = EXECUTOR if "```python" in text else ASSISTANT
    else:
        choice = ASSISTANT
    return json.dumps({"speaker": choice})
