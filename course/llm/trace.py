"""A per-call trace of model calls, readable by a learner: what each call sent, offered and got.

    with llm.Trace() as trace:          # every ChatModel call inside the block is recorded
        run_the_agent()
    print(trace.table())                # one line per call
    trace.save("trace.json")            # the same, as JSON

Each :class:`TraceCall` holds the model's name, the messages sent (abbreviated in the table and,
unless asked otherwise, in the JSON), the names of the tools offered and the ``tool_choice``, the
reply's text and tool calls, the token counts with their source (``"server"`` when the server
reported them, ``"estimate"`` when :func:`~course.llm.chat.approx_tokens` did) and the latency.
Latency is a wall-clock time: it differs between runs, so :meth:`Trace.table` leaves it out
unless ``latency=True``, and :meth:`Trace.summary` keeps only what a deterministic backend
reproduces exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .chat import ChatModel, Message, Reply, _activate_trace, _deactivate_trace


def abbreviate(text: str, width: int = 60) -> str:
    """``text`` on one line (newlines shown as ' | '), cut to ``width`` characters with '...'."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 4:
        raise ValueError(f"width must be an int >= 4, got {width!r}")
    flat = " | ".join(line.strip() for line in text.strip().splitlines())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _cut(text: str, width: int) -> str:
    """``text`` kept as it is (newlines included) up to ``width`` characters, then '...'."""
    return text if len(text) <= width else text[:max(width - 3, 0)] + "..."


def message_body(message: Message, width: int = 60) -> str:
    """A message's text and tool calls on one line, cut to ``width``; '(empty)' when it has neither."""
    body = message.content
    if message.tool_calls:
        calls = ", ".join(f"{c.name}({json.dumps(c.arguments)[1:-1] if c.raw_arguments is None else c.raw_arguments})"
                          for c in message.tool_calls)
        body = f"{body} -> {calls}" if body.strip() else f"-> {calls}"
    return abbreviate(body, width) if body.strip() else "(empty)"


def describe_message(message: Message, width: int = 60) -> str:
    """One line for a message: who sent it (a tool message names its tool and call id), then its body."""
    who = message.name or message.role
    if message.role == "tool":
        who = f"tool {message.name}[{message.tool_call_id}]" if message.name else f"tool[{message.tool_call_id}]"
    return f"{who}: {message_body(message, width)}"


@dataclass(frozen=True)
class TraceCall:
    """One model call as the trace saw it."""

    index: int
    model: str
    messages: list  # the messages sent, as dicts (Message.to_dict)
    tools: list  # names of the tools offered
    tool_choice: Any
    reply: str
    tool_calls: list  # [{"id", "name", "arguments"}]
    prompt_tokens: int
    completion_tokens: int
    token_source: str
    latency_s: float
    options: dict = field(default_factory=dict)  # response_format, seed (when given)

    def to_dict(self, width: int | None = 200) -> dict:
        """The call as JSON-ready data; message texts cut to ``width`` characters (None: in full)."""
        out = asdict(self)
        if width is not None:
            out["messages"] = [{**m, "content": _cut(m["content"], width)} if m.get("content") else m
                               for m in self.messages]
            out["reply"] = _cut(self.reply, width)
        return out


class Trace:
    """Records every model call made while it is active (``with Trace() as t:`` or ``start``/``stop``).

    Several traces may be active at once (each records every call); ``models`` limits one to
    the given models.
    """

    def __init__(self, models: list[ChatModel] | None = None) -> None:
        if models is not None and not all(isinstance(m, ChatModel) for m in models):
            raise TypeError("models must be a list of ChatModel (or None for every model)")
        self.models = None if models is None else list(models)
        self.calls: list[TraceCall] = []
        self.active = False

    # --- recording ----------------------------------------------------------------------------

    def start(self) -> "Trace":
        if not self.active:
            _activate_trace(self)
            self.active = True
        return self

    def stop(self) -> "Trace":
        _deactivate_trace(self)
        self.active = False
        return self

    def __enter__(self) -> "Trace":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, model: ChatModel, messages: list[Message], reply: Reply, options: dict) -> None:
        """Called by :meth:`ChatModel.chat` after every call while this trace is active."""
        if self.models is not None and not any(model is m for m in self.models):
            return
        tools = [t["function"]["name"] for t in options.get("tools") or []]
        calls = [{"id": c.id, "name": c.name,
                  "arguments": c.arguments if c.raw_arguments is None else c.raw_arguments}
                 for c in reply.message.tool_calls]
        extra = {k: options[k] for k in ("response_format", "seed") if k in options}
        self.calls.append(TraceCall(len(self.calls) + 1, reply.model, [m.to_dict() for m in messages], tools,
                                    options.get("tool_choice"), reply.content, calls, reply.usage.prompt_tokens,
                                    reply.usage.completion_tokens, reply.usage.source, reply.usage.latency_s,
                                    extra))

    def clear(self) -> None:
        self.calls.clear()

    def __len__(self) -> int:
        return len(self.calls)

    # --- reading ------------------------------------------------------------------------------

    def rows(self, *, width: int = 40, latency: bool = False) -> list[dict]:
        """One dict per call: the last message sent, the tools offered, the reply's text and tool calls
        (name[id]; their arguments are in the JSON), tokens and their source."""
        rows = []
        for c in self.calls:
            last = Message.coerce(c.messages[-1]) if c.messages else None
            calls = ", ".join(f"{t['name']}[{t['id']}]" for t in c.tool_calls) or "-"
            row = {"#": c.index, "model": c.model, "sent": len(c.messages),
                   "last message sent": describe_message(last, width) if last else "",
                   "tools offered": ", ".join(c.tools) or "-",
                   "reply text": abbreviate(c.reply, width) if c.reply.strip() else "-", "tool calls made": calls,
                   "in": c.prompt_tokens, "out": c.completion_tokens, "tokens from": c.token_source}
            if latency:
                row["latency s"] = f"{c.latency_s:.3f}"
            rows.append(row)
        return rows

    def table(self, *, width: int = 40, latency: bool = False) -> str:
        """The trace as an aligned text table, one line per call, then the totals."""
        rows = self.rows(width=width, latency=latency)
        if not rows:
            return "(no model calls recorded)"
        columns = list(rows[0])
        cells = [[str(r[c]) for c in columns] for r in rows]
        widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
        numeric = {"#", "sent", "in", "out", "latency s"}

        def line(values):
            return "  ".join(v.rjust(w) if c in numeric else v.ljust(w)
                             for c, v, w in zip(columns, values, widths)).rstrip()

        total = self.summary()
        sources = ", ".join(f"{n} {s}" for s, n in sorted(total["token_sources"].items()))
        out = [line(columns), "  ".join("-" * w for w in widths), *(line(v) for v in cells),
               f"{total['calls']} calls, {total['prompt_tokens']} prompt + {total['completion_tokens']} completion "
               f"tokens (counts: {sources}), {total['tool_calls']} tool calls"]
        if latency:
            out[-1] += f", {sum(c.latency_s for c in self.calls):.3f} s in the models"
        return "\n".join(out)

    def summary(self) -> dict:
        """Totals that a deterministic backend reproduces exactly (latency left out on purpose)."""
        sources: dict[str, int] = {}
        for c in self.calls:
            sources[c.token_source] = sources.get(c.token_source, 0) + 1
        return {"calls": len(self.calls), "prompt_tokens": sum(c.prompt_tokens for c in self.calls),
                "completion_tokens": sum(c.completion_tokens for c in self.calls),
                "tool_calls": sum(len(c.tool_calls) for c in self.calls), "token_sources": sources,
                "models": sorted({c.model for c in self.calls})}

    def to_json(self, *, width: int | None = 200, indent: int | None = 1) -> str:
        """The trace as JSON text: ``{"format", "summary", "calls": [...]}``."""
        data = {"format": TRACE_FORMAT, "summary": self.summary(), "calls": [c.to_dict(width) for c in self.calls]}
        return json.dumps(data, indent=indent, ensure_ascii=False, default=str)

    def save(self, path: str | Path, *, width: int | None = 200) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(width=width) + "\n")
        return path


TRACE_FORMAT = "course.llm.trace/1"
