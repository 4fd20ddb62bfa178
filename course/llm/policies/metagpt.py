"""Notebook 12 (MetaGPT): six small software tasks, hidden acceptance tests, and offline role policies.

Each task is a one-paragraph request pinning a module name and its public functions. The role
policies (product manager, architect, QA engineer, engineer) produce the artifacts a model would:
a PRD and a design as JSON, tests and code as fenced Python. What the policies assume, written
down so nobody mistakes it for a measurement:

* From the raw paragraph alone (the unstructured chat), the coder's draft misses a requirement
  stated in passing on five of six tasks (``unstructured``).
* From a design that lists every requirement, the engineer's draft covers them, but carries an
  implementation bug on three tasks (``draft``): two that the QA tests written from the PRD catch
  (``minstack``, ``intervals``) and one they do not (``wordfreq``: apostrophes).
* Given a failing test report, the engineer fixes the bug it names (``fixes``).

The hidden acceptance tests (``hidden_tests``) decide whether a task is solved; no role sees them.
The PM wraps its JSON in prose and a code fence, and the architect leaves a trailing comma on one
task, so the notebook's parser has something to repair.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..chat import Message

SOP_PM = ("You are the product manager. Turn the request into a PRD: reply with JSON {\"title\": str, "
          "\"requirements\": [str], \"acceptance\": [str]}, one requirement per behaviour, including edge cases.")
SOP_ARCHITECT = ("You are the architect. From the PRD, write the design: JSON {\"module\": str, \"functions\": "
                 "[{\"name\": str, \"signature\": str, \"requirements\": [int]}]}; requirements are 1-based "
                 "indices into the PRD's list and every requirement must be covered.")
SOP_QA = ("You are the QA engineer. From the PRD and the design, write unit tests as one ```python block of "
          "test_* functions using plain assert, importing from the design's module.")
SOP_ENGINEER = ("You are the engineer. Implement the design exactly (module and signatures) as one ```python "
                "block. If you get a test report, fix the code and reply with the whole module again.")
SYSTEM_CODER = "You are a helpful programmer. Write the code the user asks for in one ```python block."
SYSTEM_USER = "You are the user who asked for the code. You cannot run it."


@dataclass(frozen=True)
class SoftwareTask:
    id: str
    request: str
    module: str
    prd: dict
    design: dict
    qa_tests: str
    hidden_tests: str
    correct: str
    draft: str  # the engineer's first draft from the design
    unstructured: str  # the coder's draft from the raw request
    fixes: dict = field(default_factory=dict)  # failing test name -> fixed module


def _fn(name, signature, reqs):
    return {"name": name, "signature": signature, "requirements": reqs}


_RLE = '''def encode(text):
    if any(ch.isdigit() for ch in text):
        raise ValueError("digits cannot be run-length encoded")
    out, i = [], 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        out.append(f"{j - i}{text[i]}")
        i = j
    return "".join(out)


def decode(code):
    out, count = [], ""
    for ch in code:
        if ch.isdigit():
            count += ch
        else:
            out.append(ch * int(count))
            count = ""
    return "".join(out)
'''

_MINSTACK = '''class MinStack:
    def __init__(self):
        self.items, self.mins = [], []

    def push(self, x):
        self.items.append(x)
        self.mins.append(x if not self.mins else min(x, self.mins[-1]))

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty MinStack")
        self.mins.pop()
        return self.items.pop()

    def min(self):
        if not self.mins:
            raise IndexError("min of an empty MinStack")
        return self.mins[-1]
'''

_ROMAN = '''VALUES = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
          (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]


def to_roman(n):
    if not isinstance(n, int) or not 1 <= n <= 3999:
        raise ValueError("n must be an int in 1..3999")
    out = ""
    for value, letters in VALUES:
        while n >= value:
            out += letters
            n -= value
    return out


def from_roman(s):
    total, i = 0, 0
    for value, letters in VALUES:
        while s.startswith(letters, i):
            total += value
            i += len(letters)
    if i != len(s) or not s or to_roman(total) != s:
        raise ValueError(f"not a canonical Roman numeral: {s!r}")
    return total
'''

_INTERVALS = '''def merge(intervals):
    out = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [tuple(x) for x in out]
'''

_WORDFREQ = '''import re
from collections import Counter


def top_words(text, k):
    words = re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower())
    return sorted(Counter(words).items(), key=lambda item: (-item[1], item[0]))[:k]
'''

_BANK = '''class Account:
    def __init__(self, owner, balance=0):
        self.owner, self.balance, self.history = owner, balance, []

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount <= 0:
            raise ValueError("withdrawal must be positive")
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        self.history.append(("withdraw", amount))
'''


TASKS: list[SoftwareTask] = [
    SoftwareTask(
        "rle", "Write a module rle with encode(text) and decode(code) for run-length encoding, so that 'aaab' "
        "becomes '3a1b' and decode reverses it; the empty string encodes to the empty string, and since "
        "counts are digits, encode must raise ValueError for text that contains digits.", "rle",
        {"title": "Run-length encoding", "requirements": ["encode('aaab') == '3a1b'", "decode inverts encode",
                                                          "empty string encodes to ''",
                                                          "encode raises ValueError on digits"],
         "acceptance": ["round trip on letters", "'' -> ''", "ValueError for 'a1'"]},
        {"module": "rle", "functions": [_fn("encode", "encode(text: str) -> str", [1, 3, 4]),
                                        _fn("decode", "decode(code: str) -> str", [2])]},
        "from rle import encode, decode\n\ndef test_example():\n    assert encode('aaab') == '3a1b'\n\n"
        "def test_round_trip():\n    assert decode(encode('wwwwbbbw')) == 'wwwwbbbw'\n\n"
        "def test_empty():\n    assert encode('') == ''\n\ndef test_digits_rejected():\n    try:\n"
        "        encode('a1')\n    except ValueError:\n        return\n    assert False, 'no ValueError'\n",
        "from rle import encode, decode\n\ndef test_long_runs():\n    assert encode('a' * 12 + 'b') == '12a1b'\n"
        "    assert decode('12a1b') == 'a' * 12 + 'b'\n\ndef test_empty():\n    assert encode('') == '' and decode('') == ''\n\n"
        "def test_digits():\n    try:\n        encode('x9')\n    except ValueError:\n        return\n"
        "    assert False, 'digits must raise ValueError'\n",
        _RLE, _RLE, _RLE.replace('    if any(ch.isdigit() for ch in text):\n        raise ValueError("digits cannot be '
                                 'run-length encoded")\n', "")),
    SoftwareTask(
        "minstack", "Write a module minstack with a class MinStack offering push(x), pop() and min(), where min "
        "returns the smallest item currently on the stack in constant time; pop and min on an empty stack "
        "should raise IndexError.", "minstack",
        {"title": "Stack with constant-time minimum",
         "requirements": ["push(x) adds x", "pop() removes and returns the top", "min() is the smallest item now on "
                          "the stack, also after pops", "pop() and min() raise IndexError when empty"],
         "acceptance": ["min follows pushes and pops", "IndexError on empty pop and min"]},
        {"module": "minstack", "functions": [_fn("MinStack.push", "push(self, x) -> None", [1]),
                                             _fn("MinStack.pop", "pop(self) -> object", [2, 4]),
                                             _fn("MinStack.min", "min(self) -> object", [3, 4])]},
        "from minstack import MinStack\n\ndef test_min_after_pop():\n    s = MinStack()\n    for x in (5, 2, 7, 1):\n"
        "        s.push(x)\n    assert s.min() == 1\n    s.pop()\n    assert s.min() == 2\n\n"
        "def test_empty_raises():\n    s = MinStack()\n    for op in (s.pop, s.min):\n        try:\n            op()\n"
        "        except IndexError:\n            continue\n        assert False, 'no IndexError'\n",
        "from minstack import MinStack\n\ndef test_sequence():\n    s = MinStack()\n    seen = []\n"
        "    for x in (3, 3, 1, 4, 1, 0):\n        s.push(x)\n        seen.append(x)\n        assert s.min() == min(seen)\n"
        "    while seen:\n        assert s.min() == min(seen)\n        assert s.pop() == seen.pop()\n\n"
        "def test_empty_min():\n    try:\n        MinStack().min()\n    except IndexError:\n        return\n"
        "    assert False, 'min of empty must raise IndexError'\n",
        _MINSTACK,
        "class MinStack:\n    def __init__(self):\n        self.items, self.smallest = [], None\n\n"
        "    def push(self, x):\n        self.items.append(x)\n        if self.smallest is None or x < self.smallest:\n"
        "            self.smallest = x\n\n    def pop(self):\n        if not self.items:\n"
        "            raise IndexError('pop from an empty MinStack')\n        return self.items.pop()\n\n"
        "    def min(self):\n        if not self.items:\n            raise IndexError('min of an empty MinStack')\n"
        "        return self.smallest\n",
        _MINSTACK.replace('        if not self.mins:\n            raise IndexError("min of an empty MinStack")\n'
                          '        return self.mins[-1]', '        return self.mins[-1] if self.mins else None'),
        {"test_min_after_pop": _MINSTACK}),
    SoftwareTask(
        "roman", "Write a module roman with to_roman(n) and from_roman(s) for numbers 1 to 3999 in standard "
        "subtractive notation (4 is IV, 90 is XC); out-of-range numbers and malformed numerals raise ValueError.",
        "roman",
        {"title": "Roman numerals", "requirements": ["to_roman for 1..3999", "subtractive notation (IV, IX, XL, XC, "
                                                     "CD, CM)", "from_roman inverts to_roman",
                                                     "ValueError outside 1..3999 or for malformed numerals"],
         "acceptance": ["to_roman(1994) == 'MCMXCIV'", "round trip 1..3999", "ValueError for 0, 4000, 'IIII'"]},
        {"module": "roman", "functions": [_fn("to_roman", "to_roman(n: int) -> str", [1, 2, 4]),
                                          _fn("from_roman", "from_roman(s: str) -> int", [3, 4])]},
        "from roman import to_roman, from_roman\n\ndef test_example():\n    assert to_roman(1994) == 'MCMXCIV'\n\n"
        "def test_round_trip():\n    assert all(from_roman(to_roman(n)) == n for n in range(1, 4000))\n\n"
        "def test_errors():\n    for bad in (0, 4000):\n        try:\n            to_roman(bad)\n        except ValueError:\n"
        "            continue\n        assert False, bad\n",
        "from roman import to_roman, from_roman\n\ndef test_values():\n    assert to_roman(4) == 'IV' and "
        "to_roman(3999) == 'MMMCMXCIX'\n    assert from_roman('XLII') == 42\n\ndef test_round_trip():\n"
        "    assert all(from_roman(to_roman(n)) == n for n in range(1, 4000))\n\ndef test_malformed():\n"
        "    for bad in ('IIII', 'IC', ''):\n        try:\n            from_roman(bad)\n        except ValueError:\n"
        "            continue\n        assert False, bad\n",
        _ROMAN, _ROMAN,
        _ROMAN.replace('(900, "CM"), ', "").replace('(400, "CD"), ', "").replace('(90, "XC"), ', "")
        .replace('(40, "XL"), ', "").replace('(9, "IX"), ', "").replace('(4, "IV"), ', "")),
    SoftwareTask(
        "intervals", "Write a module intervals with merge(intervals) that merges overlapping (start, end) pairs "
        "and returns them sorted as tuples; intervals that only touch, like (1, 2) and (2, 3), count as "
        "overlapping, the input may come in any order, and an empty list gives an empty list.", "intervals",
        {"title": "Merge intervals", "requirements": ["overlapping intervals are merged", "result sorted, as tuples",
                                                      "touching intervals merge", "input in any order",
                                                      "[] -> []"],
         "acceptance": ["[(1,3),(2,6)] -> [(1,6)]", "[(1,2),(2,3)] -> [(1,3)]", "unsorted input", "[] -> []"]},
        {"module": "intervals", "functions": [_fn("merge", "merge(intervals: list[tuple[int, int]]) -> "
                                                  "list[tuple[int, int]]", [1, 2, 3, 4, 5])]},
        "from intervals import merge\n\ndef test_overlap():\n    assert merge([(1, 3), (2, 6)]) == [(1, 6)]\n\n"
        "def test_touching():\n    assert merge([(1, 2), (2, 3)]) == [(1, 3)]\n\ndef test_unsorted():\n"
        "    assert merge([(8, 9), (1, 2)]) == [(1, 2), (8, 9)]\n\ndef test_empty():\n    assert merge([]) == []\n",
        "from intervals import merge\n\ndef test_many():\n    assert merge([(5, 7), (1, 2), (2, 4), (6, 8), (10, 10)]) "
        "== [(1, 4), (5, 8), (10, 10)]\n\ndef test_nested():\n    assert merge([(1, 10), (2, 3)]) == [(1, 10)]\n\n"
        "def test_empty():\n    assert merge([]) == []\n",
        _INTERVALS, _INTERVALS.replace("start <= out[-1][1]", "start < out[-1][1]"),
        _INTERVALS.replace("sorted(intervals)", "intervals"),
        {"test_touching": _INTERVALS}),
    SoftwareTask(
        "wordfreq", "Write a module wordfreq with top_words(text, k) returning the k most frequent words as "
        "(word, count) pairs, most frequent first; words are case-insensitive runs of letters, keeping "
        "apostrophes inside words such as don't, and ties are broken alphabetically.", "wordfreq",
        {"title": "Word frequencies", "requirements": ["k most frequent (word, count) pairs, most frequent first",
                                                       "case-insensitive", "ties broken alphabetically",
                                                       "apostrophes inside words are kept"],
         "acceptance": ["top_words('b a b', 1) == [('b', 2)]", "'The the' counts 2 for 'the'", "ties alphabetical"]},
        {"module": "wordfreq", "functions": [_fn("top_words", "top_words(text: str, k: int) -> list[tuple[str, int]]",
                                                 [1, 2, 3, 4])]},
        "from wordfreq import top_words\n\ndef test_basic():\n    assert top_words('b a b', 1) == [('b', 2)]\n\n"
        "def test_case():\n    assert top_words('The the cat', 1) == [('the', 2)]\n\ndef test_ties():\n"
        "    assert top_words('c b a', 3) == [('a', 1), ('b', 1), ('c', 1)]\n",
        "from wordfreq import top_words\n\ndef test_mixed():\n    text = \"Don't stop. don't STOP! Go, go, go.\"\n"
        "    assert top_words(text, 3) == [('go', 3), (\"don't\", 2), ('stop', 2)]\n\ndef test_ties():\n"
        "    assert top_words('z y x y', 2) == [('y', 2), ('x', 1)]\n",
        _WORDFREQ, _WORDFREQ.replace("r\"[a-z]+(?:'[a-z]+)*\"", 'r"[a-z]+"'),
        _WORDFREQ.replace("key=lambda item: (-item[1], item[0])", "key=lambda item: -item[1]")),
    SoftwareTask(
        "bank", "Write a module bank with a class Account(owner, balance=0) having deposit(amount) and "
        "withdraw(amount); non-positive amounts and overdrafts raise ValueError, and history records each "
        "successful operation as a (kind, amount) pair.", "bank",
        {"title": "Bank account", "requirements": ["deposit adds to balance", "withdraw subtracts",
                                                   "ValueError for amounts <= 0", "ValueError on overdraft",
                                                   "history of (kind, amount)"],
         "acceptance": ["deposit then withdraw", "errors leave balance unchanged", "history lists both"]},
        {"module": "bank", "functions": [_fn("Account.deposit", "deposit(self, amount) -> None", [1, 3, 5]),
                                         _fn("Account.withdraw", "withdraw(self, amount) -> None", [2, 3, 4, 5])]},
        "from bank import Account\n\ndef test_flow():\n    a = Account('ada')\n    a.deposit(10)\n    a.withdraw(3)\n"
        "    assert a.balance == 7 and a.history == [('deposit', 10), ('withdraw', 3)]\n\ndef test_errors():\n"
        "    a = Account('ada', 5)\n    for op, amount in ((a.deposit, 0), (a.withdraw, 6)):\n        try:\n"
        "            op(amount)\n        except ValueError:\n            continue\n        assert False\n"
        "    assert a.balance == 5\n",
        "from bank import Account\n\ndef test_overdraft_keeps_balance():\n    a = Account('bo', 1)\n    try:\n"
        "        a.withdraw(2)\n    except ValueError:\n        pass\n    else:\n        assert False\n"
        "    assert a.balance == 1 and a.history == []\n\ndef test_negative():\n    try:\n"
        "        Account('bo').deposit(-5)\n    except ValueError:\n        return\n    assert False\n",
        _BANK, _BANK, _BANK),
]
TASKS_BY_ID = {t.id: t for t in TASKS}

RUNNER = '''import importlib, sys, traceback
sys.dont_write_bytecode = True
module = importlib.import_module(sys.argv[1] if len(sys.argv) > 1 else "test_module")
passed = failed = 0
for name in sorted(n for n in dir(module) if n.startswith("test_")):
    try:
        getattr(module, name)()
    except Exception as error:
        failed += 1
        line = traceback.extract_tb(error.__traceback__)[-1]
        print(f"FAIL {name}: {type(error).__name__}: {error} (line {line.lineno}: {(line.line or '').strip()})")
    else:
        passed += 1
        print(f"PASS {name}")
print(f"{passed} passed, {failed} failed")
'''

_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


def find_task(messages: list[Message]) -> SoftwareTask | None:
    text = "\n".join(m.content for m in messages)
    for task in TASKS:
        if (task.request in text or task.prd["title"] in text or f'"module": "{task.module}"' in text
                or re.search(rf"\bmodule {task.module}\b", text) or f"from {task.module} import" in text):
            return task
    return None


def _block(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


UNKNOWN = ("I am the course's offline policy for the tasks in course.llm.policies.metagpt; I do not recognise "
           "this request.")


def pm_policy(messages: list[Message]) -> str:
    task = find_task(messages)
    if task is None:
        return UNKNOWN
    return f"Here is the PRD.\n```json\n{json.dumps(task.prd, indent=1)}\n```\nLet me know if anything is missing."


def architect_policy(messages: list[Message]) -> str:
    task = find_task(messages)
    if task is None:
        return UNKNOWN
    text = json.dumps(task.design)
    if task.id == "roman":  # a trailing comma, as models write them
        text = text[:-2] + "],}"
    return text


def qa_policy(messages: list[Message]) -> str:
    task = find_task(messages)
    return UNKNOWN if task is None else f"Tests for the acceptance criteria:\n{_block(task.qa_tests)}"


def engineer_policy(messages: list[Message]) -> str:
    task = find_task(messages)
    if task is None:
        return UNKNOWN
    last = messages[-1].content
    if "FAIL " in last:
        for name in re.findall(r"FAIL (test_\w+)", last):
            if name in task.fixes:
                return f"Fixed the failure in {name}.\n{_block(task.fixes[name])}"
        return f"I could not find the bug; here is the module unchanged.\n{_block(task.draft)}"
    return f"Implementation of {task.module}.py:\n{_block(task.draft)}"


def coder_policy(messages: list[Message]) -> str:
    """The unstructured chat's programmer: codes from the raw request; no tests, no design."""
    task = find_task(messages)
    if task is None:
        return UNKNOWN
    if len([m for m in messages if m.role == "assistant"]) == 0:
        return f"Here is {task.module}.py:\n{_block(task.unstructured)}"
    return "Yes, it follows the request. TERMINATE"


def user_policy(messages: list[Message]) -> str:
    """The unstructured chat's user: cannot run code, asks once whether everything is covered."""
    if len([m for m in messages if m.role == "assistant"]) <= 1:
        return "Thanks. Are you sure it handles everything I asked for?"
    return "Great, thank you. TERMINATE"


def parse_report(output: str) -> tuple[int, int, list[str]]:
    """(passed, failed, failing test names) from RUNNER's output; a run that never reached the
    summary (an import error, a crash) counts as 0 passed and 1 failed."""
    match = None
    for match in _SUMMARY.finditer(output):
        pass
    if match is None:
        return 0, 1, ["<no summary: the tests did not run>"]
    return int(match.group(1)), int(match.group(2)), re.findall(r"^FAIL (\w+)", output, re.MULTILINE)
