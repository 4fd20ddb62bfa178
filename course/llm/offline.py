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

All of them accept the request options of a real server (``tools``, ``tool_choice``,
``response_format``, ``seed``) and can answer with tool calls in the same structure a server's
reply has (an assistant :class:`~course.llm.chat.Message` with ``tool_calls``), so an agent loop
written for a real model runs unchanged on them. :func:`code_as_tool_calls` turns a policy that
writes fenced Python blocks into one that calls a code tool instead when it is offered one.

Token counts of the scripted and rule-based models are estimates (:func:`~course.llm.chat.approx_tokens`,
``Usage.source == "estimate"``); a replay gives the recorded counts with their recorded source.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .chat import ChatModel, Completion, LLMError, Message, ToolCall, as_messages
from .parsing import code_blocks

TRANSCRIPT_FORMAT = "course.llm.transcript/1"


class ReplayMismatch(LLMError):
    """A replayed conversation asked something the recording did not."""


def _assistant_message(value: Any, who: str) -> Message:
    """A policy's or script's answer (text or an assistant Message with tool calls) as a Message."""
    if isinstance(value, str):
        return Message("assistant", value)
    if isinstance(value, Message) and value.role == "assistant":
        return value
    raise LLMError(f"{who} returned {type(value).__name__}, expected str or an assistant Message")


class ScriptedModel(ChatModel):
    """Replies from a fixed script, in order; each item a string, an assistant Message (e.g. with
    tool calls) or a function of the messages returning one of those."""

    def __init__(self, replies: Sequence[str | Message | Callable[[list[Message]], str | Message]], *,
                 name: str = "scripted", **kwargs) -> None:
        if isinstance(replies, str) or not isinstance(replies, Sequence) or not replies:
            raise ValueError("replies must be a non-empty list of strings (or functions of the messages)")
        for i, r in enumerate(replies):
            if not (isinstance(r, (str, Message)) or callable(r)):
                raise TypeError(f"replies[{i}] must be a str, a Message or a callable, got {type(r).__name__}")
        super().__init__(name=name, **kwargs)
        self.replies = list(replies)
        self.position = 0
        self.description = f"scripted replies ({len(self.replies)} in order), not a language model"

    def _complete(self, messages, **options):
        if self.position >= len(self.replies):
            raise LLMError(f"{self.name} ran out of scripted replies after {len(self.replies)} call(s)")
        item = self.replies[self.position]
        self.position += 1
        answer = _assistant_message(item(messages) if callable(item) else item, self.name)
        answer = honour_response_format(answer, options.get("response_format"), self.name)
        return Completion(answer, raw={"script_index": self.position - 1})


def honour_response_format(message: Message, response_format: dict | None, who: str) -> Message:
    """An offline reply checked against the request's ``response_format``; a reply that does not fit raises.

    A server can constrain decoding to a JSON Schema; a script or a rule-based policy cannot, so an
    offline model passes its reply through when it already fits ("json_object": a JSON object;
    "json_schema": JSON valid against the schema, checked by :func:`course.llm.tools.validate_value`)
    and otherwise raises :class:`LLMError` saying so, instead of answering in another format. A
    reply that only makes tool calls is not checked (the format applies to the text).
    """
    kind = (response_format or {}).get("type", "text")
    if kind == "text" or (message.tool_calls and not message.content):
        return message
    from .tools import ToolArgumentError, validate_value  # tools imports chat, as this module does

    cannot = (f"{who}: an offline model cannot constrain its output to response_format {kind!r}; write its "
              "script or policy to answer in that format, or use a server that supports response_format")
    try:
        value = json.loads(message.content)
    except json.JSONDecodeError as error:
        raise LLMError(f"{cannot}. Its reply is not JSON ({error.msg}); it began: {message.content[:80]!r}") from None
    if kind == "json_object" and not isinstance(value, dict):
        raise LLMError(f"{cannot}. Its reply is JSON but not an object: {message.content[:80]!r}")
    if kind == "json_schema":
        spec = response_format["json_schema"]
        try:
            validate_value(spec.get("schema", {}), value, name=str(spec.get("name", "response")))
        except ToolArgumentError as error:
            raise LLMError(f"{cannot}. Its reply does not fit the schema: {error}") from None
    return message


def _takes_tools(policy: Callable) -> bool:
    try:
        params = inspect.signature(policy).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "tools" or p.kind == p.VAR_KEYWORD for p in params)


class RuleModel(ChatModel):
    """A rule-based policy: ``policy(messages) -> str``, deterministic, written for known tasks.

    A policy that has a ``tools`` parameter (or ``**options``) is also given the request options
    (``tools``, ``tool_choice``, ``response_format``, ``seed``) and may answer with an assistant
    Message that carries tool calls.
    """

    def __init__(self, policy: Callable[..., str | Message], *, name: str = "rules",
                 description: str | None = None, **kwargs) -> None:
        if not callable(policy):
            raise TypeError(f"policy must be a function messages -> str, got {type(policy).__name__}")
        super().__init__(name=name, **kwargs)
        self.policy = policy
        self.takes_tools = _takes_tools(policy)
        self.description = description or "a rule-based policy written for the course's tasks, not a language model"

    def _complete(self, messages, *, max_tokens=None, stop=None, temperature=0.0, **options):
        if self.takes_tools:
            answer = self.policy(list(messages), **{"tools": None, **options})
        else:
            answer = self.policy(list(messages))
        if not isinstance(answer, (str, Message)):
            raise LLMError(f"{self.name}: the policy returned {type(answer).__name__}, expected str")
        answer = _assistant_message(answer, f"{self.name}: the policy")
        return Completion(honour_response_format(answer, options.get("response_format"), self.name))


def code_as_tool_calls(policy: Callable[[list[Message]], str], *, tool: str = "run_python", argument: str = "code",
                       executor: str = "executor") -> Callable[..., str | Message]:
    """A policy that calls the tool ``tool`` where ``policy`` writes a fenced Python block.

    ``policy`` reads and writes the text form of a code conversation: its code in a fenced block,
    the result of running it in a user message from ``executor``. The wrapped policy reads the
    tool-call form (an assistant message with a call ``tool(argument=code)``, then a ``tool``
    message answering it), translates it into the text form for ``policy``, and translates the
    answer back: the prose before the first block becomes the message's content, each Python
    block one call. When ``tool`` is not among the tools offered it answers in text, as before.
    Call ids are ``call_1``, ``call_2``, ... numbered over the conversation, so replies are
    deterministic.
    """
    if not callable(policy):
        raise TypeError(f"policy must be a function messages -> str, got {type(policy).__name__}")

    def as_text(message: Message) -> Message:
        if message.role == "tool":
            return Message("user", message.content, executor)
        if message.tool_calls:
            blocks = [f"```python\n{c.arguments.get(argument, '')}\n```" for c in message.tool_calls if c.name == tool]
            return Message("assistant", "\n".join([message.content, *blocks]) if message.content else "\n".join(blocks),
                           message.name)
        return message

    def wrapped(messages: list[Message], tools: list[dict] | None = None, **_options) -> str | Message:
        text = policy([as_text(m) for m in messages])
        offered = {t["function"]["name"] for t in tools or []}
        blocks = [code for language, code in code_blocks(text) if language in ("python", "py", "")]
        if tool not in offered or not blocks:
            return text
        prose = text[:text.find("```")].strip()
        made = sum(len(m.tool_calls) for m in messages)
        numbers = itertools.count(made + 1)
        calls = [ToolCall(tool, {argument: code.rstrip("\n")}, f"call_{next(numbers)}") for code in blocks]
        return Message("assistant", prose, None, tuple(calls))

    wrapped.__name__ = getattr(policy, "__name__", "policy") + "_with_tools"
    wrapped.__doc__ = f"{getattr(policy, '__name__', 'policy')}, calling the tool {tool!r} instead of writing code blocks."
    return wrapped


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

    def _complete(self, messages, *, max_tokens, stop, temperature, **options):
        reply = self.model.chat(messages, max_tokens=max_tokens, stop=stop, temperature=temperature, **options)
        call = {"key": request_key(messages), "messages": [m.to_dict() for m in messages],
                "reply": reply.content, "usage": reply.usage.to_dict()}
        if reply.message.tool_calls:
            call["tool_calls"] = [c.to_dict() for c in reply.message.tool_calls]
        call.update({k: v for k, v in options.items() if v is not None})  # tools, tool_choice, ...
        self.calls.append(call)
        return Completion(reply.message, reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.raw,
                          reply.usage.source)

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
        if not isinstance(call.get("tool_calls", []), list):
            raise ValueError(f"transcript call {i}: 'tool_calls' must be a list")
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

    def _complete(self, messages, **options):
        if self.strict:
            if self.position >= len(self.calls):
                raise ReplayMismatch(f"{self.name}: the recording has only {len(self.calls)} call(s); "
                                     f"call {self.position + 1} was not recorded")
            call = self.calls[self.position]
            recorded = as_messages(call["messages"])
            if recorded != list(messages):
                raise ReplayMismatch(f"{self.name}: call {self.position + 1} differs from the recording: "
                                     + _first_difference(recorded, list(messages)))
            recorded_tools = call.get("tools")
            if recorded_tools is not None and recorded_tools != options.get("tools"):
                offered = [t["function"]["name"] for t in options.get("tools") or []]
                raise ReplayMismatch(f"{self.name}: call {self.position + 1} offers tools {offered}, the recording "
                                     f"offered {[t['function']['name'] for t in recorded_tools]} (or other specs)")
        else:
            indices = self.by_key.get(request_key(messages), [])
            if not indices:
                raise ReplayMismatch(f"{self.name}: no recorded call sent these {len(messages)} message(s); "
                                     f"the last one began {messages[-1].content[:60]!r}")
            call = self.calls[indices.pop(0) if len(indices) > 1 else indices[0]]
        self.position += 1
        usage = call["usage"]
        source = usage.get("source") or ("estimate" if usage.get("estimated") else "server")
        calls = tuple(ToolCall.from_dict(c, "recorded tool call") for c in call.get("tool_calls", []))
        return Completion(Message("assistant", call["reply"], None, calls), usage["prompt_tokens"],
                          usage["completion_tokens"], {"replayed": True}, source)


def _first_difference(recorded: list[Message], sent: list[Message]) -> str:
    for i, (a, b) in enumerate(zip(recorded, sent)):
        if a != b and (a.role, a.content) == (b.role, b.content):
            return (f"message {i} ({a.role} {a.content[:60]!r}) differs in its name, tool calls or tool_call_id: "
                    f"recorded {a.to_dict()}, sent {b.to_dict()}"[:400])
        if a != b:
            return (f"message {i} recorded as {a.role} {a.content[:60]!r}, "
                    f"sent as {b.role} {b.content[:60]!r}")
    return f"the recording has {len(recorded)} message(s), the request {len(sent)}"
