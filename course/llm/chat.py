"""The chat-model interface every agent notebook uses: messages in, one message out, usage recorded.

A :class:`ChatModel` turns a list of :class:`Message` into a :class:`Reply` (the assistant's
message plus a :class:`Usage`: prompt and completion tokens, latency in seconds and cost in USD).
Every call is written into the model's :class:`Ledger`, and an optional :class:`Budget` shared
by several models (the agents of one conversation) refuses calls once tokens, cost or the number
of calls are spent.

Backends subclass :class:`ChatModel` and implement ``_complete``: :mod:`course.llm.http` talks to
any OpenAI-compatible server, :mod:`course.llm.offline` holds the deterministic ones (scripted,
rule-based and replayed).

Tool calls. ``chat`` takes the OpenAI request options ``tools`` (JSON-Schema specs, see
:mod:`course.llm.tools`), ``tool_choice``, ``response_format`` and ``seed``; a reply may carry
:class:`ToolCall` objects (``reply.message.tool_calls``), and the answer to one is a ``tool``
message with the call's ``tool_call_id`` (:func:`tool_result`). Every call is also offered to the
active :class:`~course.llm.trace.Trace` objects, so a learner can read what each call sent and got.

Token counts. An HTTP backend reports the server's own counts when its reply has ``usage``
(``Usage.source == "server"``). Otherwise, and for the offline backends, which have no
tokenizer, the counts are estimates (``source == "estimate"``) by :func:`approx_tokens`, a fixed
rule (letters in runs of at most 6, digits in runs of at most 3, every other non-space character
alone, plus 4 tokens of overhead per message). It lands within a factor of about 1.5 of a BPE
tokenizer on English and code, which is enough to compare two agent designs on the same backend;
it is not a model's true count. The tool specs offered count as their JSON text, a tool call as
its name and argument text.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_OVERHEAD_TOKENS = 4
_TOKEN = re.compile(r"[A-Za-z]{1,6}|\d{1,3}|[^\sA-Za-z\d]")
TOKEN_SOURCES = ("server", "estimate")
TOOL_CHOICES = ("auto", "none", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


class LLMError(RuntimeError):
    """Something went wrong talking to a model; the message says what and what to do."""


class BudgetExceeded(LLMError):
    """A :class:`Budget` refused a call because tokens, cost or calls are spent."""


@dataclass(frozen=True)
class ToolCall:
    """One tool call a model asked for: the tool's name, its arguments, and the call's id.

    ``raw_arguments`` keeps the model's argument text exactly as sent when it was not a JSON
    object (then ``arguments`` is ``{}``), so the agent can tell the model what was wrong.
    """

    name: str
    arguments: dict
    id: str = ""
    raw_arguments: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"ToolCall.name must be a str, got {type(self.name).__name__}")
        if not isinstance(self.arguments, dict):
            raise TypeError(f"ToolCall.arguments must be a dict, got {type(self.arguments).__name__}")
        if not isinstance(self.id, str):
            raise TypeError(f"ToolCall.id must be a str, got {type(self.id).__name__}")

    def to_dict(self) -> dict:
        """The OpenAI wire form: arguments travel as a JSON string."""
        arguments = self.raw_arguments if self.raw_arguments is not None else json.dumps(self.arguments)
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": arguments}}

    @classmethod
    def from_dict(cls, value: Any, where: str = "tool call") -> "ToolCall":
        """A ToolCall from the OpenAI form ``{"id", "type": "function", "function": {"name", "arguments"}}``.

        ``arguments`` may be a JSON string (the standard) or an object (some servers send one).
        """
        if isinstance(value, ToolCall):
            return value
        function = value.get("function") if isinstance(value, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"{where} must look like {{'id': ..., 'type': 'function', 'function': "
                             f"{{'name': ..., 'arguments': '<JSON>'}}}}, got {str(value)[:120]}")
        ident = value.get("id") or ""
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, dict):
            return cls(function["name"], dict(arguments), str(ident))
        if not isinstance(arguments, str):
            return cls(function["name"], {}, str(ident), json.dumps(arguments))
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return cls(function["name"], parsed, str(ident))
        return cls(function["name"], {}, str(ident), arguments)


@dataclass(frozen=True)
class Message:
    """One chat message. ``name`` says which agent spoke when several share a conversation.

    An assistant message may carry ``tool_calls``; a ``tool`` message answers one of them and
    names it in ``tool_call_id``.
    """

    role: str
    content: str
    name: str | None = None
    tool_calls: tuple = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Message.role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"Message.content must be a str, got {type(self.content).__name__}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"Message.name must be a str or None, got {type(self.name).__name__}")
        if isinstance(self.tool_calls, list):
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if not isinstance(self.tool_calls, tuple) or not all(isinstance(c, ToolCall) for c in self.tool_calls):
            raise TypeError("Message.tool_calls must be a tuple of ToolCall")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only an assistant message can make tool calls, not a {self.role!r} message")
        if self.tool_call_id is not None and (self.role != "tool" or not isinstance(self.tool_call_id, str)):
            raise ValueError("tool_call_id belongs on a 'tool' message and must be a str")

    def to_dict(self) -> dict:
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def coerce(cls, value: Any, where: str = "message") -> "Message":
        """A :class:`Message` from a Message or a ``{"role", "content"[, "name", "tool_calls",
        "tool_call_id"]}`` dict (content may be null beside tool calls, as servers send it)."""
        if isinstance(value, Message):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"role", "content", "name", "tool_calls", "tool_call_id"}
            if "role" not in value or "content" not in value or unknown:
                raise ValueError(f"{where} must have keys 'role' and 'content' (and optionally 'name', "
                                 f"'tool_calls', 'tool_call_id'), got keys {sorted(value)}")
            calls = tuple(ToolCall.from_dict(c, f"{where}.tool_calls[{i}]")
                          for i, c in enumerate(value.get("tool_calls") or ()))
            content = "" if value["content"] is None and calls else value["content"]
            return cls(value["role"], content, value.get("name"), calls, value.get("tool_call_id"))
        raise TypeError(f"{where} must be a Message or a dict with 'role' and 'content', got {type(value).__name__}")


def system(content: str) -> Message:
    return Message("system", content)


def user(content: str, name: str | None = None) -> Message:
    return Message("user", content, name)


def assistant(content: str, name: str | None = None, tool_calls: Sequence[ToolCall] = ()) -> Message:
    return Message("assistant", content, name, tuple(tool_calls))


def tool_result(call: ToolCall, content: str) -> Message:
    """The ``tool`` message that answers ``call``: its output, with the call's id and the tool's name."""
    if not isinstance(call, ToolCall):
        raise TypeError(f"call must be a ToolCall, got {type(call).__name__}")
    return Message("tool", content, call.name, (), call.id)


def as_messages(messages: Iterable[Any]) -> list[Message]:
    """Validate a conversation: a non-empty sequence of messages (or message dicts)."""
    if isinstance(messages, (str, bytes, Message, dict)):
        raise TypeError("messages must be a list of messages, not a single "
                        f"{type(messages).__name__}; wrap it: [llm.user('...')]")
    out = [Message.coerce(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if not out:
        raise ValueError("messages is empty: a chat needs at least one message")
    return out


def approx_tokens(text: str) -> int:
    """An approximate token count for ``text`` (see the module docstring for the rule)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return len(_TOKEN.findall(text))


def message_tokens(message: Message) -> int:
    """Approximate tokens of one message: content, tool calls (as JSON) and a fixed overhead."""
    calls = sum(approx_tokens(c.name) + approx_tokens(c.to_dict()["function"]["arguments"]) for c in message.tool_calls)
    return approx_tokens(message.content) + calls + MESSAGE_OVERHEAD_TOKENS


def prompt_tokens(messages: Sequence[Message], tools: Sequence[dict] | None = None) -> int:
    """Approximate tokens of a whole prompt: every message, plus the tool specs offered (as JSON)."""
    offered = approx_tokens(json.dumps(list(tools))) if tools else 0
    return sum(message_tokens(m) for m in messages) + offered


@dataclass(frozen=True)
class Usage:
    """Tokens, latency and cost of one call. ``source`` says where the token counts come from:
    ``"server"`` (the reply's ``usage`` field) or ``"estimate"`` (:func:`approx_tokens`)."""

    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float = 0.0
    source: str = "server"

    def __post_init__(self) -> None:
        if self.source not in TOKEN_SOURCES:
            raise ValueError(f"Usage.source must be one of {TOKEN_SOURCES}, got {self.source!r}")

    @property
    def estimated(self) -> bool:
        """True when the counts come from approx_tokens, not the server."""
        return self.source == "estimate"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "latency_s": self.latency_s, "cost_usd": self.cost_usd, "source": self.source,
                "estimated": self.estimated}


@dataclass(frozen=True)
class Reply:
    message: Message
    usage: Usage
    model: str
    raw: Any = None  # the backend's own answer (the HTTP JSON, the replayed record ...)

    @property
    def content(self) -> str:
        return self.message.content

    @property
    def tool_calls(self) -> tuple:
        return self.message.tool_calls


@dataclass(frozen=True)
class Completion:
    """What a backend's ``_complete`` returns: the assistant's message (or its text), the token
    counts if the backend knows them (None: estimate them), its raw answer, and where the counts
    come from. Backends may also return the older tuple ``(text, n_in, n_out, raw)``."""

    message: Message | str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    raw: Any = None
    source: str | None = None  # None: "server" when both counts are given, else "estimate"


@dataclass
class Budget:
    """Limits shared by every model that is given this budget.

    A call is refused (:class:`BudgetExceeded`) when the budget is already spent before it; the
    call that crosses a limit completes, so a conversation overshoots by at most one reply. Any
    limit left as ``None`` is not enforced.
    """

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_calls: int | None = None
    max_seconds: float | None = None  # wall clock from the first call (a guard, not deterministic)
    tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    started: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_calls"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Budget.{name} must be a positive int or None, got {value!r}")
        if self.max_cost_usd is not None and not (isinstance(self.max_cost_usd, (int, float))
                                                  and self.max_cost_usd > 0):
            raise ValueError(f"Budget.max_cost_usd must be a positive number or None, got {self.max_cost_usd!r}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, (int, float))
                                                 and not isinstance(self.max_seconds, bool) and self.max_seconds > 0):
            raise ValueError(f"Budget.max_seconds must be a positive number or None, got {self.max_seconds!r}")

    def exhausted(self) -> str | None:
        """Why the budget is spent (a sentence), or None while calls are still allowed."""
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"token budget spent: {self.tokens} of {self.max_tokens} tokens used"
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            return f"cost budget spent: ${self.cost_usd:.4f} of ${self.max_cost_usd:.4f} used"
        if self.max_calls is not None and self.calls >= self.max_calls:
            return f"call budget spent: {self.calls} of {self.max_calls} model calls used"
        if self.max_seconds is not None and self.started is not None:
            elapsed = time.perf_counter() - self.started
            if elapsed >= self.max_seconds:
                return f"time budget spent: {elapsed:.1f} s of {self.max_seconds:g} s"
        return None

    def check(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        reason = self.exhausted()
        if reason:
            raise BudgetExceeded(f"budget exceeded ({reason}); the model was not called")

    def charge(self, usage: Usage) -> None:
        self.tokens += usage.total_tokens
        self.cost_usd += usage.cost_usd
        self.calls += 1


@dataclass
class Ledger:
    """Every call a model made: usage per call and totals."""

    calls: list[Usage] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.calls)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.calls)

    @property
    def latency_s(self) -> float:
        return sum(u.latency_s for u in self.calls)

    def summary(self) -> dict:
        """Counts that are deterministic on an offline backend (latency is left out on purpose)."""
        return {"calls": len(self.calls), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}

    def clear(self) -> None:
        self.calls.clear()


#: Traces that are recording (see :class:`course.llm.trace.Trace`); every model offers each call to them.
_ACTIVE_TRACES: list = []
_TRACES_LOCK = threading.Lock()


def _activate_trace(trace) -> None:
    with _TRACES_LOCK:
        _ACTIVE_TRACES.append(trace)


def _deactivate_trace(trace) -> None:
    with _TRACES_LOCK:
        if trace in _ACTIVE_TRACES:
            _ACTIVE_TRACES.remove(trace)


def as_tool_specs(tools: Any) -> list[dict] | None:
    """Validate ``tools``: a list of OpenAI tool specs ``{"type": "function", "function": {"name", ...}}``
    or Python functions (turned into specs by :func:`course.llm.tools.tool_schema`)."""
    if tools is None:
        return None
    if isinstance(tools, (dict, str)) or not isinstance(tools, (list, tuple)):
        raise TypeError(f"tools must be a list of tool specs or functions, got {type(tools).__name__}")
    specs = []
    for i, tool in enumerate(tools):
        if callable(tool) and not isinstance(tool, dict):
            from .tools import tool_schema

            tool = tool_schema(tool)
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'description': "
                             f"..., 'parameters': <JSON Schema>}}}} (see llm.tools.tool_schema), got {str(tool)[:100]}")
        specs.append(tool)
    names = [t["function"]["name"] for t in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"tools has duplicate names: {names}")
    return specs


def _check_request_options(tools: list[dict] | None, tool_choice: Any, response_format: Any, seed: Any) -> None:
    names = [t["function"]["name"] for t in tools or []]
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            if tool_choice not in TOOL_CHOICES:
                raise ValueError(f"tool_choice must be one of {TOOL_CHOICES} or {{'type': 'function', "
                                 f"'function': {{'name': ...}}}}, got {tool_choice!r}")
        elif not (isinstance(tool_choice, dict) and tool_choice.get("type") == "function"
                  and isinstance(tool_choice.get("function"), dict)
                  and tool_choice["function"].get("name") in names):
            raise ValueError(f"tool_choice {str(tool_choice)[:100]} must name one of the tools offered: {names}")
        if not tools and tool_choice != "none":
            raise ValueError(f"tool_choice={tool_choice!r} needs tools= as well")
    if response_format is not None and not (isinstance(response_format, dict)
                                            and response_format.get("type") in RESPONSE_FORMATS):
        raise ValueError(f"response_format must be a dict with 'type' one of {RESPONSE_FORMATS}, "
                         f"got {str(response_format)[:100]}")
    if response_format is not None and response_format["type"] == "json_schema" and not isinstance(
            response_format.get("json_schema"), dict):
        raise ValueError("response_format of type 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")


class ChatModel:
    """Base class: validation, timing, usage, cost, budget, ledger and traces around ``_complete``.

    ``price_in_per_mtok`` and ``price_out_per_mtok`` are USD per million prompt and completion
    tokens (0 for local and offline models unless you set a price to study budgets).
    """

    name = "chat-model"
    description = "a chat model"

    def __init__(self, *, name: str | None = None, price_in_per_mtok: float = 0.0,
                 price_out_per_mtok: float = 0.0, budget: Budget | None = None) -> None:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"name must be a non-empty str, got {name!r}")
            self.name = name
        for label, price in (("price_in_per_mtok", price_in_per_mtok), ("price_out_per_mtok", price_out_per_mtok)):
            if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0 or not math.isfinite(price):
                raise ValueError(f"{label} must be a finite number >= 0 (USD per million tokens), got {price!r}")
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"budget must be a course.llm.Budget or None, got {type(budget).__name__}")
        self.price_in_per_mtok = float(price_in_per_mtok)
        self.price_out_per_mtok = float(price_out_per_mtok)
        self.budget = budget
        self.ledger = Ledger()

    # Backends implement this and return a Completion (or the tuple (text, n_in, n_out, raw)).
    # The request options tools, tool_choice, response_format and seed arrive as keyword arguments
    # only when the caller gave them, so a backend written before they existed still works without.
    def _complete(self, messages: list[Message], *, max_tokens: int | None, stop: Sequence[str] | None,
                  temperature: float, **options) -> Completion | tuple[str, int | None, int | None, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement _complete")

    def chat(self, messages: Iterable[Any], *, max_tokens: int | None = None, stop: Sequence[str] | None = None,
             temperature: float = 0.0, budget: Budget | None = None, tools: Sequence[Any] | None = None,
             tool_choice: str | dict | None = None, response_format: dict | None = None,
             seed: int | None = None) -> Reply:
        """Send a conversation, get the assistant's reply; usage is recorded, charged and traced.

        ``tools`` (specs or functions), ``tool_choice``, ``response_format`` and ``seed`` are the
        OpenAI request options; they reach the backend only when given.
        """
        msgs = as_messages(messages)
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
            raise TypeError("stop must be a list of strings or None")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {temperature!r}")
        specs = as_tool_specs(tools)
        _check_request_options(specs, tool_choice, response_format, seed)
        options = {k: v for k, v in (("tools", specs), ("tool_choice", tool_choice),
                                     ("response_format", response_format), ("seed", seed)) if v is not None}
        budgets = [b for b in (self.budget, budget) if b is not None]
        for b in budgets:
            b.check()
        start = time.perf_counter()
        done = self._complete(msgs, max_tokens=max_tokens, stop=stop, temperature=float(temperature), **options)
        latency = time.perf_counter() - start
        reply = self._reply(msgs, specs, done, latency)
        self.ledger.calls.append(reply.usage)
        for b in budgets:
            b.charge(reply.usage)
        for trace in list(_ACTIVE_TRACES):
            trace.record(self, msgs, reply, options)
        return reply

    def _reply(self, msgs: list[Message], specs: list[dict] | None, done: Any, latency: float) -> Reply:
        """A Reply from what ``_complete`` returned: counts from the backend when it has them, else estimated."""
        if not isinstance(done, Completion):
            if not (isinstance(done, tuple) and len(done) == 4):
                raise LLMError(f"{self.name}: _complete must return a Completion or (text, n_in, n_out, raw), "
                               f"got {type(done).__name__}")
            done = Completion(*done)
        message = done.message
        if isinstance(message, str):
            message = Message("assistant", message)
        if not isinstance(message, Message) or message.role != "assistant":
            raise LLMError(f"{self.name}: the backend returned {type(message).__name__} instead of text "
                           "or an assistant Message")
        n_in, n_out = done.prompt_tokens, done.completion_tokens
        source = done.source or ("server" if n_in is not None and n_out is not None else "estimate")
        n_in = prompt_tokens(msgs, specs) if n_in is None else int(n_in)
        n_out = message_tokens(message) - MESSAGE_OVERHEAD_TOKENS if n_out is None else int(n_out)
        cost = (n_in * self.price_in_per_mtok + n_out * self.price_out_per_mtok) / 1e6
        return Reply(message, Usage(n_in, n_out, latency, cost, source), self.name, done.raw)

    def __call__(self, messages: Iterable[Any], **options) -> str:
        """Shorthand: the reply's text."""
        return self.chat(messages, **options).content

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.description}>"
