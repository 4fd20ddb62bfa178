"""Offline, deterministic chat models, and recording/replaying conversations as JSON.

None of these is a language model, and each says so in its ``description``:

* :class:`ScriptedModel` returns a fixed list of replies in order (for unit tests).
* :class:`RuleModel` calls a Python function ``policy(messages) -> str``: a rule-based policy
  written for the course's own tasks (the agent notebooks ship theirs in
  :mod:`course.llm.policies`). It reads the conversation the way a model would and answers by
  rules; on anything it was not written for it says so instead of pretending.
* :class:`ReplayModel` replays a transcript recorded with :class:`Recorder`, so a run against a
  real model becomes a test fixture: the same requests get the same replies and the same token
  counts, and a request that differs from the recording stops with the first difference.

Token counts of the scripted and rule-based models are estimates (:func:`~course.llm.chat.approx_tokens`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .chat import ChatModel, LLMError, Message, as_messages

TRANSCRIPT_FORMAT = "course.llm.transcript/1"


class ReplayMismatch(LLMError):
    """A replayed conversation asked something the recording did not."""


class ScriptedModel(ChatModel):
    """Replies from a fixed script, in order; each item a string or a function of the messages."""

    def __init__(self, replies: Sequence[str | Callable[[list[Message]], str]], *, name: str = "scripted",
                 **kwargs) -> None:
        if isinstance(replies, str) or not isinstance(replies, Sequence) or not replies:
            raise ValueError("replies must be a non-empty list of strings (or functions of the messages)")
        for i, r in enumerate(replies):
            if not (isinstance(r, str) or callable(r)):
                raise TypeError(f"replies[{i}] must be a str or a callable, got {type(r).__name__}")
        super().__init__(name=name, **kwargs)
        self.replies = list(replies)
        self.position = 0
        self.description = f"scripted replies ({len(self.replies)} in order), not a language model"

    def _complete(self, messages, **_options):
        if self.position >= len(self.replies):
            raise LLMError(f"{self.name} ran out of scripted replies after {len(self.replies)} call(s)")
        item = self.replies[self.position]
        self.position += 1
        return (item(messages) if callable(item) else item), None, None, {"script_index": self.position - 1}


class RuleModel(ChatModel):
    """A rule-based policy: ``policy(messages) -> str``, deterministic, written for known tasks."""

    def __init__(self, policy: Callable[[list[Message]], str], *, name: str = "rules",
                 description: str | None = None, **kwargs) -> None:
        if not callable(policy):
            raise TypeError(f"policy must be a function messages -> str, got {type(policy).__name__}")
        super().__init__(name=name, **kwargs)
        self.policy = policy
        self.description = description or "a rule-based policy written for the course's tasks, not a language model"

    def _complete(self, messages, **_options):
        text = self.policy(list(messages))
        if not isinstance(text, str):
            raise LLMError(f"{self.name}: the policy returned {type(text).__name__}, expected str")
        return text, None, None, None


# --- record and replay ------------------------------------------------------------------------------


def request_key(messages: Iterable[Message]) -> str:
    """A stable fingerprint of a request (roles, names and contents), for replay lookups."""
    payload = json.dumps([m.to_dict() for m in messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Recorder(ChatModel):
    """Wraps any model and records every request, reply and usage; :meth:`save` writes JSON."""

    def __init__(self, model: ChatModel, **kwargs) -> None:
        if not isinstance(model, ChatModel):
            raise TypeError(f"model must be a ChatModel, got {type(model).__name__}")
        super().__init__(name=kwargs.pop("name", model.name), **kwargs)
        self.model = model
        self.calls: list[dict] = []
        self.description = f"recording {model.description}"

    def _complete(self, messages, *, max_tokens, stop, temperature):
        reply = self.model.chat(messages, max_tokens=max_tokens, stop=stop, temperature=temperature)
        self.calls.append({"key": request_key(messages), "messages": [m.to_dict() for m in messages],
                           "reply": reply.content, "usage": reply.usage.to_dict()})
        return reply.content, reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.raw

    def transcript(self) -> dict:
        return {"format": TRANSCRIPT_FORMAT, "model": self.model.name, "description": self.model.description,
                "calls": list(self.calls)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.transcript(), indent=1, ensure_ascii=False) + "\n")
        return path


def load_transcript(source: str | Path | dict) -> dict:
    """A transcript from a path or a dict, validated."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no transcript at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from None
    elif isinstance(source, dict):
        data = source
    else:
        raise TypeError(f"source must be a path or a transcript dict, got {type(source).__name__}")
    if data.get("format") != TRANSCRIPT_FORMAT or not isinstance(data.get("calls"), list):
        raise ValueError(f"not a course transcript: expected format {TRANSCRIPT_FORMAT!r} and a 'calls' list")
    for i, call in enumerate(data["calls"]):
        if not {"messages", "reply", "usage"} <= set(call):
            raise ValueError(f"transcript call {i} lacks 'messages', 'reply' or 'usage'")
    return data


class ReplayModel(ChatModel):
    """Replays a recorded transcript.

    ``strict=True`` (default): call *i* must send exactly the messages of recorded call *i*.
    ``strict=False``: any recorded call with identical messages answers, in any order (useful
    when agents run in a different order but ask the same things).
    """

    def __init__(self, source: str | Path | dict, *, strict: bool = True, **kwargs) -> None:
        data = load_transcript(source)
        super().__init__(name=kwargs.pop("name", f"replay:{data.get('model', '?')}"), **kwargs)
        self.calls = data["calls"]
        self.strict = bool(strict)
        self.position = 0
        self.by_key: dict[str, list[int]] = {}
        for i, call in enumerate(self.calls):
            key = call.get("key") or request_key(as_messages(call["messages"]))
            self.by_key.setdefault(key, []).append(i)
        self.description = (f"replay of {len(self.calls)} recorded call(s) to {data.get('model', '?')} "
                            f"({data.get('description', '')})")

    def _complete(self, messages, **_options):
        if self.strict:
            if self.position >= len(self.calls):
                raise ReplayMismatch(f"{self.name}: the recording has only {len(self.calls)} call(s); "
                                     f"call {self.position + 1} was not recorded")
            call = self.calls[self.position]
            recorded = as_messages(call["messages"])
            if recorded != list(messages):
                raise ReplayMismatch(f"{self.name}: call {self.position + 1} differs from the recording: "
                                     + _first_difference(recorded, list(messages)))
        else:
            indices = self.by_key.get(request_key(messages), [])
            if not indices:
                raise ReplayMismatch(f"{self.name}: no recorded call sent these {len(messages)} message(s); "
                                     f"the last one began {messages[-1].content[:60]!r}")
            call = self.calls[indices.pop(0) if len(indices) > 1 else indices[0]]
        self.position += 1
        usage = call["usage"]
        return call["reply"], usage["prompt_tokens"], usage["completion_tokens"], {"replayed": True}


def _first_difference(recorded: list[Message], sent: list[Message]) -> str:
    for i, (a, b) in enumerate(zip(recorded, sent)):
        if a != b:
            return (f"message {i} recorded as {a.role} {a.content[:60]!r}, "
                    f"sent as {b.role} {b.content[:60]!r}")
    return f"the recording has {len(recorded)} message(s), the request {len(sent)}"
