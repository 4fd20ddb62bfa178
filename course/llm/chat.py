"""The chat-model interface every agent notebook uses: messages in, one message out, usage recorded.

A :class:`ChatModel` turns a list of :class:`Message` into a :class:`Reply` (the assistant's
message plus a :class:`Usage`: prompt and completion tokens, latency in seconds and cost in USD).
Every call is written into the model's :class:`Ledger`, and an optional :class:`Budget` shared
by several models (the agents of one conversation) refuses calls once tokens, cost or the number
of calls are spent.

Backends subclass :class:`ChatModel` and implement ``_complete``: :mod:`course.llm.http` talks to
any OpenAI-compatible server, :mod:`course.llm.offline` holds the deterministic ones (scripted,
rule-based and replayed).

Token counts. An HTTP backend reports the server's own counts. The offline backends have no
tokenizer, so they count with :func:`approx_tokens`, a fixed rule (letters in runs of at most 6,
digits in runs of at most 3, every other non-space character alone, plus 4 tokens of overhead per
message). It lands within a factor of about 1.5 of a BPE tokenizer on English and code, which is
enough to compare two agent designs on the same backend; it is not a model's true count.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_OVERHEAD_TOKENS = 4
_TOKEN = re.compile(r"[A-Za-z]{1,6}|\d{1,3}|[^\sA-Za-z\d]")


class LLMError(RuntimeError):
    """Something went wrong talking to a model; the message says what and what to do."""


class BudgetExceeded(LLMError):
    """A :class:`Budget` refused a call because tokens, cost or calls are spent."""


@dataclass(frozen=True)
class Message:
    """One chat message. ``name`` says which agent spoke when several share a conversation."""

    role: str
    content: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Message.role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"Message.content must be a str, got {type(self.content).__name__}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"Message.name must be a str or None, got {type(self.name).__name__}")

    def to_dict(self) -> dict:
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        return out

    @classmethod
    def coerce(cls, value: Any, where: str = "message") -> "Message":
        """A :class:`Message` from a Message or a ``{"role", "content"[, "name"]}`` dict."""
        if isinstance(value, Message):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"role", "content", "name"}
            if "role" not in value or "content" not in value or unknown:
                raise ValueError(f"{where} must have keys 'role' and 'content' (and optionally 'name'), "
                                 f"got keys {sorted(value)}")
            return cls(value["role"], value["content"], value.get("name"))
        raise TypeError(f"{where} must be a Message or a dict with 'role' and 'content', got {type(value).__name__}")


def system(content: str) -> Message:
    return Message("system", content)


def user(content: str, name: str | None = None) -> Message:
    return Message("user", content, name)


def assistant(content: str, name: str | None = None) -> Message:
    return Message("assistant", content, name)


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


def prompt_tokens(messages: Sequence[Message]) -> int:
    """Approximate tokens of a whole prompt: content plus a fixed overhead per message."""
    return sum(approx_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float = 0.0
    estimated: bool = False  # True when the counts come from approx_tokens, not the server

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reply:
    message: Message
    usage: Usage
    model: str
    raw: Any = None  # the backend's own answer (the HTTP JSON, the replayed record ...)

    @property
    def content(self) -> str:
        return self.message.content


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


class ChatModel:
    """Base class: validation, timing, usage, cost, budget and ledger around ``_complete``.

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

    # Backends implement this: return (content, prompt_tokens or None, completion_tokens or None, raw).
    def _complete(self, messages: list[Message], *, max_tokens: int | None, stop: Sequence[str] | None,
                  temperature: float) -> tuple[str, int | None, int | None, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement _complete")

    def chat(self, messages: Iterable[Any], *, max_tokens: int | None = None, stop: Sequence[str] | None = None,
             temperature: float = 0.0, budget: Budget | None = None) -> Reply:
        """Send a conversation, get the assistant's reply; usage is recorded and charged."""
        msgs = as_messages(messages)
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
            raise TypeError("stop must be a list of strings or None")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {temperature!r}")
        budgets = [b for b in (self.budget, budget) if b is not None]
        for b in budgets:
            b.check()
        start = time.perf_counter()
        content, n_in, n_out, raw = self._complete(msgs, max_tokens=max_tokens, stop=stop,
                                                   temperature=float(temperature))
        latency = time.perf_counter() - start
        if not isinstance(content, str):
            raise LLMError(f"{self.name}: the backend returned {type(content).__name__} instead of text")
        estimated = n_in is None or n_out is None
        n_in = prompt_tokens(msgs) if n_in is None else int(n_in)
        n_out = approx_tokens(content) if n_out is None else int(n_out)
        cost = (n_in * self.price_in_per_mtok + n_out * self.price_out_per_mtok) / 1e6
        usage = Usage(n_in, n_out, latency, cost, estimated)
        self.ledger.calls.append(usage)
        for b in budgets:
            b.charge(usage)
        return Reply(Message("assistant", content), usage, self.name, raw)

    def __call__(self, messages: Iterable[Any], **options) -> str:
        """Shorthand: the reply's text."""
        return self.chat(messages, **options).content

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.description}>"
