"""Checks for notebook 11 (AutoGen): code extraction, the executing auto-reply, the two-agent loop,
speaker selection with a fallback, human-in-the-loop input, and a tool's JSON Schema from its
Python signature.

Everything here is exact (strings, lists, call counts): no tolerances are needed. The chat models
the checks use are :class:`course.llm.ScriptedModel` and :class:`course.llm.RuleModel`, so a check
never depends on a real model.
"""

from __future__ import annotations

from types import SimpleNamespace

from .. import llm
from ..llm import tools as reference_tools
from ..llm.policies import autogen as tasks
from .core import CheckFailed, check, require


def _show(value) -> str:
    return repr(value)[:300]


# --- 11.1 -----------------------------------------------------------------------------------------

EXTRACT_CASES = [
    ("", []),
    ("No code here, just prose.", []),
    ("```python\nprint(1)\n```", ["print(1)\n"]),
    ("```\nx = 2\n```", ["x = 2\n"]),
    ("```py\ny = 3\n```", ["y = 3\n"]),
    ("First:\n```python\na = 1\n```\nthen:\n```python\nb = 2\n```\n", ["a = 1\n", "b = 2\n"]),
    ("```sh\nls -la\n```\n```python\nprint('ok')\n```", ["print('ok')\n"]),
    ("```python\ns = '```'\nprint(s)\n```", ["s = '```'\nprint(s)\n"]),
    ("  ```python\n  indented = True\n  ```", ["  indented = True\n"]),
    ("```python\nprint('never closed')", []),
    ("```json\n{\"a\": 1}\n```\n```Python\nz = 0\n```", ["z = 0\n"]),
]


@check
def extract_code(fn):
    """``fn(text)`` returns the Python code blocks of ``text`` in order."""
    require(callable(fn), f"extract_code must be a function, got {type(fn).__name__}")
    for text, expected in EXTRACT_CASES:
        got = fn(text)
        require(isinstance(got, list), f"extract_code({text!r}) should return a list, got {type(got).__name__}")
        # blank lines at either end of a block do not matter to Python, so compare without them
        same = [c.strip("\n") for c in got] == [c.strip("\n") for c in expected] if all(
            isinstance(c, str) for c in got) else False
        if not same:
            hint = ""
            if len(got) < len(expected) and len(expected) > 1:
                hint = "\n  hint: a greedy pattern (.*) swallows everything up to the last fence; match lazily"
            elif len(got) > len(expected):
                hint = ("\n  hint: skip blocks tagged with another language (sh, json), unclosed fences, and "
                        "``` that is not alone on its line")
            raise CheckFailed(f"extract_code({text!r}) should be {expected!r}, got {_show(got)}{hint}")
    return f"{len(EXTRACT_CASES)} replies: none, one, several, other languages, fences inside strings, unclosed"


# --- 11.2 -----------------------------------------------------------------------------------------


def _result(status="ok", stdout="", stderr="", message=None, returncode=0):
    messages = {"ok": "ran successfully", "error": "exited with code 1: ZeroDivisionError: division by zero",
                "timeout": "timed out after 1 s (time limit); the process was killed"}
    return llm.ExecResult(status, returncode if status != "timeout" else None, stdout, stderr, 0.01,
                          message or messages[status])


class _FakeRun:
    def __init__(self, results):
        self.results, self.calls = dict(results), []

    def __call__(self, code):
        self.calls.append(code)
        return self.results[code.strip()]


@check
def execute_code_blocks(fn):
    """``fn(text, run)`` runs the blocks in order, stops at a failure, and formats the reply."""
    require(callable(fn), f"execute_code_blocks must be a function, got {type(fn).__name__}")
    run = _FakeRun({})
    got = fn("I think the answer is 4.", run)
    require(got is None and not run.calls, f"with no code block the reply should be None and nothing run; got "
            f"{_show(got)} after {len(run.calls)} run(s)")

    run = _FakeRun({"print(45)": _result(stdout="45\n")})
    got = fn("```python\nprint(45)\n```", run)
    want = "exitcode: 0 (ran successfully)\nCode output:\n45"
    require(got == want, f"one block that prints 45: expected {want!r}, got {_show(got)}")

    run = _FakeRun({"print(1)": _result(stdout="1\n"), "print(2)": _result(stdout="2\n")})
    got = fn("```python\nprint(1)\n```\nand\n```python\nprint(2)\n```", run)
    want = "exitcode: 0 (ran successfully)\nCode output:\n1\n2"
    require(got == want, f"two blocks printing 1 and 2: expected {want!r}, got {_show(got)}\n"
            "  hint: keep the stdout of every block, in order")

    error = _result("error", stdout="before\n", stderr="Traceback ...\nZeroDivisionError: division by zero\n",
                    returncode=1)
    run = _FakeRun({"print('before'); 1/0": error, "print('never')": _result(stdout="never\n")})
    got = fn("```python\nprint('before'); 1/0\n```\n```python\nprint('never')\n```", run)
    want = ("exitcode: 1 (exited with code 1: ZeroDivisionError: division by zero)\nCode output:\n"
            "before\nTraceback ...\nZeroDivisionError: division by zero")
    require(len(run.calls) == 1, f"after a failing block nothing else should run; {len(run.calls)} blocks ran\n"
            "  hint: stop at the first result that is not .ok")
    require(got == want, f"a failing block: expected {want!r}, got {_show(got)}\n"
            "  hint: on failure add the block's stderr after its stdout, so the model sees the traceback")

    run = _FakeRun({"while True: pass": _result("timeout")})
    got = fn("```python\nwhile True: pass\n```", run)
    want = "exitcode: 1 (timed out after 1 s (time limit); the process was killed)\nCode output:\n"
    require(got == want, f"a block that times out: expected {want!r}, got {_show(got)}")

    run = _FakeRun({"print(7)": _result(stdout="7\n")})
    got = fn("```sh\nrm -rf /\n```\n```python\nprint(7)\n```", run)
    require(run.calls == ["print(7)\n"] or [c.strip() for c in run.calls] == ["print(7)"],
            f"only Python blocks may run; ran {run.calls!r}\n  hint: use your extract_code")

    real = fn("```python\nprint(6 * 7)\n```", lambda code: llm.run_python(code, timeout_s=5))
    require(real == "exitcode: 0 (ran successfully)\nCode output:\n42",
            f"with the real sandbox, print(6 * 7) should give 'exitcode: 0 (ran successfully)\\nCode output:\\n42', "
            f"got {_show(real)}")
    return "no code, one block, two blocks, a failure mid-way, a time-out, a shell block, the real sandbox"


# --- 11.3 -----------------------------------------------------------------------------------------


class _Agent:
    def __init__(self, name, replies):
        self.name, self.replies, self.seen = name, list(replies), []

    def generate_reply(self, history):
        self.seen.append(len(history))
        item = self.replies.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def _names(result):
    return [h["name"] for h in result.history]


@check
def run_chat(fn, chat_result):
    """``fn(initiator, recipient, message, max_turns=...)`` alternates speakers and stops for the right reason."""
    require(callable(fn), f"run_chat must be a function, got {type(fn).__name__}")

    alice, bob = _Agent("alice", []), _Agent("bob", ["done. TERMINATE"])
    result = fn(alice, bob, "hello", max_turns=5)
    require(isinstance(result, chat_result), f"run_chat should return a ChatResult, got {type(result).__name__}")
    require(result.history == [{"name": "alice", "content": "hello"}, {"name": "bob", "content": "done. TERMINATE"}],
            f"bob terminates at once: history should be the opening message and bob's reply, got {_show(result.history)}")
    require(result.stop_reason == "bob sent a termination message",
            f"stop_reason should be 'bob sent a termination message', got {result.stop_reason!r}")

    alice, bob = _Agent("alice", ["a1", "a2"]), _Agent("bob", ["b1", "b2"])
    result = fn(alice, bob, "start", max_turns=3)
    require(_names(result) == ["alice", "bob", "alice", "bob"],
            f"max_turns=3 should give 3 replies (bob, alice, bob) after the opening message; speakers were "
            f"{_names(result)}\n  hint: the recipient speaks first, then they alternate; count replies, not messages")
    require(result.stop_reason == "max_turns=3 reached", f"stop_reason should be 'max_turns=3 reached', got "
            f"{result.stop_reason!r}")
    require(bob.seen == [1, 3] and alice.seen == [2], f"each speaker should see the whole history so far "
            f"(lengths bob {bob.seen}, alice {alice.seen}; expected bob [1, 3], alice [2])")

    result = fn(_Agent("alice", []), _Agent("bob", ["last words TERMINATE"]), "x", max_turns=1)
    require(result.stop_reason == "bob sent a termination message",
            f"a termination message on the last allowed turn should stop as a termination, got {result.stop_reason!r}")

    result = fn(_Agent("alice", [None]), _Agent("bob", ["b1"]), "x", max_turns=5)
    require(result.stop_reason == "alice ended the chat" and _names(result) == ["alice", "bob"],
            f"alice returns None on her turn: expected 'alice ended the chat' with 2 messages, got "
            f"{result.stop_reason!r} with {_names(result)}")

    budget = llm.Budget(max_calls=1)
    model = llm.ScriptedModel(["one", "two"], budget=budget)
    talker = SimpleNamespace(name="bot", generate_reply=lambda history: model.chat([llm.user(history[-1]["content"])]).content)
    result = fn(_Agent("alice", ["more please"]), talker, "go", max_turns=6)
    require(result.stop_reason.startswith("budget: budget exceeded (call budget spent: 1 of 1"),
            f"the second model call exceeds a 1-call budget: stop_reason should start with "
            f"'budget: budget exceeded (call budget spent: 1 of 1', got {result.stop_reason!r}\n"
            "  hint: catch llm.BudgetExceeded around generate_reply and put its message in the reason")
    require(_names(result) == ["alice", "bot", "alice"], f"the history should keep the replies made before the "
            f"budget ran out, got speakers {_names(result)}")
    return "termination, max_turns, None, budget; speaker order and history"


# --- 11.4 -----------------------------------------------------------------------------------------


class _Capture(llm.ChatModel):
    def __init__(self, replies):
        super().__init__(name="capture")
        self.replies, self.requests = list(replies), []

    def _complete(self, messages, **_):
        self.requests.append(list(messages))
        return self.replies.pop(0), None, None, None


@check
def select_speaker(fn):
    """``fn(manager, names, history, last)``: the model's choice, or round-robin with the reason."""
    require(callable(fn), f"select_speaker must be a function, got {type(fn).__name__}")
    names = ["assistant", "executor", "verifier"]
    history = [{"name": "user", "content": "Task"}, {"name": "assistant", "content": "```python\nprint(1)\n```"}]
    for last, want in ((None, "assistant"), ("assistant", "executor"), ("verifier", "assistant"), ("user", "assistant")):
        got = fn(None, names, history, last)
        require(got == (want, "round-robin"), f"manager=None, last={last!r}: expected ({want!r}, 'round-robin'), "
                f"got {_show(got)}")

    manager = _Capture(['{"speaker": "executor"}'])
    got = fn(manager, names, history, "assistant")
    require(got == ("executor", "model"), f"the manager answers {{\"speaker\": \"executor\"}}: expected "
            f"('executor', 'model'), got {_show(got)}")
    sent = manager.requests[0]
    require(sent[0].role == "system" and all(n in sent[0].content for n in names),
            "the first message to the manager should be a system message naming every agent")
    require(sent[-1].content == tasks.SPEAKER_PROMPT, f"the last message should be tasks.SPEAKER_PROMPT, got "
            f"{sent[-1].content[:80]!r}")
    middle = [(m.role, m.name, m.content) for m in sent[1:-1]]
    require(middle == [("user", h["name"], h["content"]) for h in history],
            f"the history should be sent as user messages named after their speakers, got {middle!r}")

    manager = _Capture(["Executor should go next.", '```json\n{"speaker": "verifier"}\n```'])
    got = fn(manager, names, history, "assistant")
    require(got == ("verifier", "model") and len(manager.requests) == 2,
            f"a malformed first answer then valid JSON: expected ('verifier', 'model') after 2 calls, got {_show(got)} "
            f"after {len(manager.requests)} call(s)\n  hint: llm.chat_json retries with a repair message")

    manager = _Capture(["no idea"] * 5)
    got = fn(manager, names, history, "executor")
    require(isinstance(got, tuple) and len(got) == 2 and got[0] == "verifier"
            and str(got[1]).startswith("round-robin fallback"),
            f"a manager that never answers JSON: expected ('verifier', 'round-robin fallback: ...'), got {_show(got)}")
    require(len(manager.requests) == 2, f"max_retries=1 means 2 calls to the manager, made {len(manager.requests)}")

    manager = _Capture(['{"speaker": "ceo"}'])
    got = fn(manager, names, history, "verifier")
    require(isinstance(got, tuple) and got[0] == "assistant" and str(got[1]).startswith("round-robin fallback")
            and "ceo" in str(got[1]),
            f"the manager names 'ceo', who is not in the chat: expected ('assistant', 'round-robin fallback: "
            f"... 'ceo' ...'), got {_show(got)}")
    return "round-robin, model choice, retry after malformed JSON, fallback when it stays malformed or names a stranger"


# --- 11.5 -----------------------------------------------------------------------------------------


@check
def human_reply(fn, exit_token):
    """``fn(mode, incoming, input_fn)``: when to ask the person, and what their answer means."""
    require(callable(fn), f"human_reply must be a function, got {type(fn).__name__}")
    asked = []

    def person(answer):
        def ask(prompt):
            asked.append(prompt)
            return answer
        return ask

    cases = [("NEVER", "hello", "ignored", None, 0), ("ALWAYS", "hello", "", None, 1),
             ("ALWAYS", "hello", "   ", None, 1), ("ALWAYS", "hello", "exit", exit_token, 1),
             ("ALWAYS", "hello", "  EXIT ", exit_token, 1), ("ALWAYS", "hello", "try a loop", "try a loop", 1),
             ("TERMINATE", "still working", "ignored", None, 0), ("TERMINATE", "done. TERMINATE", "check again",
                                                                   "check again", 1)]
    for mode, incoming, answer, want, n_asked in cases:
        asked.clear()
        got = fn(mode, incoming, person(answer))
        require(got == want and len(asked) == n_asked,
                f"mode {mode!r}, incoming {incoming!r}, the person types {answer!r}: expected {want!r} after asking "
                f"{n_asked} time(s), got {got!r} after asking {len(asked)} time(s)"
                + ("\n  hint: TERMINATE mode asks only when the incoming message ends with TERMINATE"
                   if mode == "TERMINATE" else ""))
    try:
        fn("SOMETIMES", "hello", person(""))
    except ValueError:
        pass
    else:
        raise CheckFailed("mode 'SOMETIMES' should raise ValueError")
    return f"{len(cases)} mode/answer combinations and a bad mode"


# --- 11.6 -----------------------------------------------------------------------------------------

_PYTHON_NAMES = {"int", "float", "str", "bool", "list", "dict", "None", "NoneType"}
_REFUSALS = {"untyped": "its parameter `path` has no annotation, so there is no type to tell the model",
             "undocumented": "it has no docstring, so there is no description for the model to read"}


def _without_descriptions(schema):
    """A property schema without 'description' (the exercise does not ask for parameter descriptions)."""
    if not isinstance(schema, dict):
        return schema
    return {k: _without_descriptions(v) for k, v in schema.items() if not (k == "description" and isinstance(v, str))}


def _type_hint(name, prop, got, want) -> str:
    got_types = got.get("type") if isinstance(got, dict) else None
    got_types = got_types if isinstance(got_types, list) else [got_types]
    want_types = want["type"] if isinstance(want["type"], list) else [want["type"]]
    if any(t in _PYTHON_NAMES for t in got_types if isinstance(t, str)):
        return "\n  hint: JSON Schema names the types integer, number, string, boolean, array, object, null"
    if "boolean" in want_types and "integer" in got_types:
        return "\n  hint: bool is a subclass of int in Python; test for bool before int"
    if "null" in want_types and "null" not in got_types:
        return "\n  hint: Optional[T] means null is allowed: add \"null\" to the type (and to the enum, if any)"
    if "enum" in want and "enum" not in got:
        return "\n  hint: a Literal[...] is an \"enum\" of its values (with their JSON type)"
    if "items" in want and "items" not in got:
        return "\n  hint: list[T] is {\"type\": \"array\", \"items\": <schema of T>}"
    if "default" in want and "default" not in got:
        return "\n  hint: write a parameter's default into its schema as \"default\""
    return ""


def _compare_schema(name, got, want):
    """Raise CheckFailed at the first difference between the learner's spec and the reference."""
    require(isinstance(got, dict) and got.get("type") == "function" and isinstance(got.get("function"), dict),
            f"tool_schema({name}) should return {{\"type\": \"function\", \"function\": {{...}}}}, got {_show(got)}")
    function, expected = got["function"], want["function"]
    require(function.get("name") == expected["name"], f"tool_schema({name}): function.name should be "
            f"{expected['name']!r}, got {_show(function.get('name'))}")
    require(function.get("description") == expected["description"],
            f"tool_schema({name}): the description should be {expected['description']!r}, got "
            f"{_show(function.get('description'))}\n  hint: the docstring's first paragraph (inspect.cleandoc, up to "
            "the first blank line), its lines joined by single spaces")
    params, wanted = function.get("parameters"), expected["parameters"]
    require(isinstance(params, dict) and params.get("type") == "object",
            f"tool_schema({name}): parameters should be a JSON Schema {{\"type\": \"object\", ...}}, got {_show(params)}")
    props = params.get("properties")
    require(isinstance(props, dict) and list(props) == list(wanted["properties"]),
            f"tool_schema({name}): parameters.properties should have the keys {list(wanted['properties'])} in "
            f"signature order, got {_show(props)}")
    for prop, want_prop in wanted["properties"].items():
        got_prop = _without_descriptions(props[prop])
        want_prop = _without_descriptions(want_prop)
        require(got_prop == want_prop, f"tool_schema({name}): the schema of parameter {prop!r} should be "
                f"{_show(want_prop)}, got {_show(got_prop)}{_type_hint(name, prop, got_prop, want_prop)}")
    required = params.get("required")
    require(required is not None, f"tool_schema({name}): parameters has no \"required\" list, so the model may "
            f"leave out any argument; expected {wanted['required']}")
    require(required == wanted["required"], f"tool_schema({name}): required should be {wanted['required']} "
            f"(the parameters without a default, in order), got {_show(required)}")
    require(params.get("additionalProperties") is False, f"tool_schema({name}): parameters should say "
            "\"additionalProperties\": false, so an argument the function does not take is refused")
    require(set(params) == set(wanted) and set(function) == set(expected) and set(got) == set(want),
            f"tool_schema({name}): unexpected keys; expected exactly {_show(want)}, got {_show(got)}")


@check
def tool_schema(fn, examples):
    """``fn(function)`` returns the OpenAI tool spec of each course example, or refuses the bad ones."""
    require(callable(fn), f"tool_schema must be a function, got {type(fn).__name__}")
    reference = reference_tools.SCHEMA_EXAMPLES
    require(isinstance(examples, (tuple, list)) and len(examples) == len(reference),
            f"pass the course's examples: check.tool_schema(tool_schema, llm.tools.SCHEMA_EXAMPLES) "
            f"({len(reference)} functions)")
    for example, mine in zip(examples, reference):
        name = mine.__name__
        if name in _REFUSALS:
            kind = TypeError if name == "untyped" else ValueError
            try:
                got = fn(example)
            except NotImplementedError:
                raise
            except kind:
                continue
            except Exception as error:  # noqa: BLE001 - any other failure is the learner's, reported here
                raise CheckFailed(f"tool_schema({name}) should raise {kind.__name__} ({_REFUSALS[name]}), "
                                  f"got {type(error).__name__}: {error}") from None
            raise CheckFailed(f"tool_schema({name}) should raise {kind.__name__}: {_REFUSALS[name]}; it returned "
                              f"{_show(got)}")
        _compare_schema(name, fn(example), reference_tools.tool_schema(mine))
    return (f"{len(reference)} functions: str/int/float/bool, defaults, list[int], Literal, Optional, no "
            "arguments, a missing annotation, a missing docstring")
