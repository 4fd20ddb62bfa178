"""Structured output from free text: JSON and tool calls, with repair and a clear retry message.

Models wrap JSON in prose or code fences, leave trailing commas, write Python's ``True`` and
single quotes. :func:`parse_json` tries, in order: the text as is; the inside of a fenced code
block; the first balanced ``{...}`` or ``[...]`` in the text; and for each of those, the repairs
"drop trailing commas" and "read it as a Python literal" (``ast.literal_eval``, which evaluates
no code). It returns a :class:`Parsed` saying what worked, which repairs were needed, and,
when nothing worked, a ``retry_message`` to send back to the model.

:func:`chat_json` is the loop around it: ask, parse, and on failure send the retry message, at
most ``max_retries`` times, then raise :class:`MalformedReply` with a message a learner can read.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .chat import ChatModel, LLMError, Message, ToolCall, as_messages

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_BLOCK = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n`]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class MalformedReply(LLMError):
    """The model's reply could not be parsed even after the allowed retries."""


@dataclass
class Parsed:
    ok: bool
    value: Any = None
    error: str = ""
    retry_message: str = ""
    repairs: list[str] = field(default_factory=list)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Fenced code blocks in a reply, in order, as ``(language, code)``; language lower-cased, ''
    when untagged. Fences open and close at the start of a line; an unclosed fence is ignored."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [(m.group(1).lower(), m.group(2)) for m in _BLOCK.finditer(text)]


def _balanced(text: str) -> str | None:
    """The first balanced JSON-looking object or array in ``text`` (string-aware), or None."""
    for start, ch in enumerate(text):
        if ch not in "{[":
            continue
        stack, quote, escaped = [], None, False
        for end in range(start, len(text)):
            c = text[end]
            if quote:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == quote:
                    quote = None
                continue
            if c in "\"'":
                quote = c
            elif c in "{[":
                stack.append("}" if c == "{" else "]")
            elif c in "}]":
                if not stack or stack.pop() != c:
                    break
                if not stack:
                    return text[start:end + 1]
        # unbalanced from this start: try the next opening bracket
    return None


def _python_literal(text: str) -> Any:
    value = ast.literal_eval(text)

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (set, frozenset, bytes, complex)):
            raise ValueError(f"{type(v).__name__} is not JSON")
        return v

    return plain(value)


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _schema_hint(required: Mapping[str, Any] | None) -> str:
    if not required:
        return ""
    return " with keys " + ", ".join(f'"{k}" ({_type_name(t)})' for k, t in required.items())


def validate(value: Any, required: Mapping[str, Any] | None) -> str:
    """'' when ``value`` is a dict with every required key of the right type, else the first problem."""
    if not required:
        return ""
    if not isinstance(value, dict):
        return f"expected a JSON object, got a JSON {type(value).__name__}"
    for key, kind in required.items():
        if key not in value:
            return f"missing key {key!r}"
        want = kind if isinstance(kind, tuple) else (kind,)
        got = value[key]
        # bool is an int in Python, but not in a schema that asks for a number
        if (isinstance(got, bool) and bool not in want) or not isinstance(got, want):
            return f"key {key!r} should be {_type_name(kind)}, got {type(got).__name__} {json.dumps(got)[:40]}"
    return ""


def parse_json(text: str, *, required: Mapping[str, Any] | None = None) -> Parsed:
    """Parse JSON out of a model reply, repairing the common mistakes; see the module docstring.

    ``required`` maps keys to types (or tuples of types) the object must have, e.g.
    ``{"answer": (int, float), "reason": str}``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if required is not None and not isinstance(required, Mapping):
        raise TypeError(f"required must be a dict of key -> type, got {type(required).__name__}")
    candidates: list[tuple[str, list[str]]] = [(text.strip(), [])]
    fence = _FENCE.search(text)
    if fence:
        candidates.append((fence.group(2).strip(), ["took the code block"]))
    inner = _balanced(text)
    if inner is not None:
        candidates.append((inner, ["took the first {...}/[...] in the text"]))
    first_error = ""
    schema_error = ""
    for candidate, how in candidates:
        dropped = _TRAILING_COMMA.sub(r"\1", candidate)
        attempts = [(json.loads, candidate, []), (json.loads, dropped, ["dropped trailing commas"]),
                    (_python_literal, candidate, ["read it as a Python literal"])]
        for loader, attempt, fix in attempts:
            try:
                value = loader(attempt)
            except json.JSONDecodeError as error:
                first_error = first_error or f"{error.msg} at line {error.lineno} column {error.colno}"
                continue
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            problem = validate(value, required)
            if problem:
                schema_error = schema_error or problem
                continue
            return Parsed(True, value, repairs=how + fix)
    error = schema_error or (f"not valid JSON ({first_error})" if first_error else "no JSON found")
    if not text.strip():
        error = "the reply was empty"
    retry = (f"Your last reply could not be used: {error}. Reply again with only one JSON object"
             f"{_schema_hint(required)}; no prose, no code fences.")
    return Parsed(False, error=error, retry_message=retry)


def _tool_parameters(tool: Any) -> tuple[list[str], list[str]]:
    """(required, all) parameter names of a tool given as a callable or a list of names."""
    if callable(tool):
        params = inspect.signature(tool).parameters.values()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        needed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.default is p.empty]
        return needed, names
    if isinstance(tool, (list, tuple)) and all(isinstance(n, str) for n in tool):
        return list(tool), list(tool)
    raise TypeError(f"a tool must be a callable or a list of parameter names, got {type(tool).__name__}")


def parse_tool_call(text: str, tools: Mapping[str, Any]) -> Parsed:
    """Parse ``{"tool": NAME, "arguments": {...}}`` and check it against ``tools``.

    ``tools`` maps a tool name to the callable (its signature gives the parameters) or to a list
    of parameter names. ``"name"``/``"args"`` are accepted as spellings of ``"tool"``/``"arguments"``.
    On success ``value`` is a :class:`ToolCall`. This reads a tool call written in free text (a
    model or server without native tool calling); a server that supports ``tools=`` returns typed
    calls in ``reply.message.tool_calls`` instead, checked with :mod:`course.llm.tools`.
    """
    if not isinstance(tools, Mapping) or not tools:
        raise ValueError("tools must be a non-empty dict of name -> callable or parameter names")
    available = ", ".join(sorted(tools))
    usage = (' Call a tool with {"tool": "<name>", "arguments": {...}}; '
             f"available tools: {available}.")
    parsed = parse_json(text)
    if not parsed.ok:
        parsed.retry_message += usage
        return parsed
    value = parsed.value
    problem = ""
    if not isinstance(value, dict):
        problem = f"expected a JSON object, got a JSON {type(value).__name__}"
    else:
        name = value.get("tool", value.get("name"))
        args = value.get("arguments", value.get("args", {}))
        if not isinstance(name, str):
            problem = 'missing "tool": the name of the tool to call'
        elif name not in tools:
            problem = f"unknown tool {name!r}"
        elif not isinstance(args, dict):
            problem = f'"arguments" must be an object, got {type(args).__name__}'
        else:
            needed, allowed = _tool_parameters(tools[name])
            missing = [n for n in needed if n not in args]
            extra = [n for n in args if n not in allowed]
            if missing:
                problem = f"tool {name!r} needs argument(s) {missing}"
            elif extra:
                problem = f"tool {name!r} has no argument(s) {extra}; it takes {allowed}"
            else:
                return Parsed(True, ToolCall(name, dict(args)), repairs=parsed.repairs)
    return Parsed(False, error=problem, retry_message=f"Your last reply could not be used: {problem}.{usage}")


def chat_json(model: ChatModel, messages, *, required: Mapping[str, Any] | None = None, max_retries: int = 2,
              parse: Callable[[str], Parsed] | None = None, **options) -> tuple[Any, list[Message]]:
    """Ask ``model`` for JSON; on a malformed reply send the retry message, up to ``max_retries`` times.

    Returns ``(value, conversation)`` where the conversation includes any failed attempts and the
    retry messages. Raises :class:`MalformedReply` when every attempt failed; its message names
    the last problem and quotes the start of the last reply.
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    conversation = as_messages(messages)
    parse = parse or (lambda text: parse_json(text, required=required))
    for _attempt in range(max_retries + 1):
        reply = model.chat(conversation, **options)
        conversation.append(reply.message)
        parsed = parse(reply.content)
        if parsed.ok:
            return parsed.value, conversation
        conversation.append(Message("user", parsed.retry_message))
    excerpt = reply.content.strip().replace("\n", " ")[:80]
    raise MalformedReply(f"{model.name} gave no usable reply in {max_retries + 1} attempt(s): {parsed.error}. "
                         f"Last reply began: {excerpt!r}")
