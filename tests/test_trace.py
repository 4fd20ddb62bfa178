"""course.llm.trace: every call made inside a Trace is recorded with its messages, tools, tool calls,
tokens (and where the counts came from), latency and model; the table and the JSON say the same.
The HTTP case talks to a tiny server on 127.0.0.1 started here (no network)."""

from __future__ import annotations

import json

import pytest

from course import llm
from course.llm import trace as tracing

from fake_openai_server import FakeOpenAIServer


def lookup(word: str) -> str:
    """Look a word up in the dictionary."""
    return f"{word}: a small domesticated carnivore"


CALL = llm.ToolCall("lookup", {"word": "cat"}, "call_1")


def two_step_conversation(model):
    box = llm.Toolbox([lookup])
    messages = [llm.system("Use the tools."), llm.user("What is a cat?")]
    first = model.chat(messages, tools=box.specs, tool_choice="auto")
    messages += [first.message, *(box.run(c) for c in first.tool_calls)]
    second = model.chat(messages, tools=box.specs, seed=1)
    return messages + [second.message]


def test_trace_records_each_call_with_tools_tool_calls_and_estimated_tokens():
    model = llm.ScriptedModel([llm.assistant("", tool_calls=[CALL]), "A cat is a small carnivore."], name="offline")
    with llm.Trace() as trace:
        two_step_conversation(model)
    assert len(trace) == 2
    first, second = trace.calls
    assert (first.index, first.model, first.tools, first.tool_choice) == (1, "offline", ["lookup"], "auto")
    assert first.tool_calls == [{"id": "call_1", "name": "lookup", "arguments": {"word": "cat"}}]
    assert second.messages[-1] == {"role": "tool", "content": "cat: a small domesticated carnivore", "name": "lookup",
                                   "tool_call_id": "call_1"}
    assert second.options == {"seed": 1} and second.reply == "A cat is a small carnivore."
    assert [c.token_source for c in trace.calls] == ["estimate", "estimate"]
    # the trace's counts are the ones the model's ledger charged
    assert [(c.prompt_tokens, c.completion_tokens) for c in trace.calls] == [
        (u.prompt_tokens, u.completion_tokens) for u in model.ledger.calls]


def test_trace_records_nothing_outside_its_block_and_can_be_limited_to_models():
    a, b = llm.ScriptedModel(["a"] * 3, name="a"), llm.ScriptedModel(["b"] * 3, name="b")
    a.chat([llm.user("before")])
    only_a = llm.Trace(models=[a]).start()
    with llm.Trace() as everything:
        a.chat([llm.user("x")])
        b.chat([llm.user("y")])
    only_a.stop()
    a.chat([llm.user("after")])
    assert [c.model for c in everything.calls] == ["a", "b"]
    assert [c.model for c in only_a.calls] == ["a"]
    with pytest.raises(TypeError, match="ChatModel"):
        llm.Trace(models=["a"])


def test_trace_table_shows_one_line_per_call_and_the_totals():
    model = llm.ScriptedModel([llm.assistant("", tool_calls=[CALL]), "A cat is a small carnivore."], name="offline")
    with llm.Trace() as trace:
        two_step_conversation(model)
    table = trace.table()
    lines = table.splitlines()
    assert lines[0].split() == ["#", "model", "sent", "last", "message", "sent", "tools", "offered", "reply", "text",
                                "tool", "calls", "made", "in", "out", "tokens", "from"]
    assert "lookup[call_1]" in lines[2] and "estimate" in lines[2]
    assert "tool lookup[call_1]: cat: a small domesticated carnivore" in lines[3] and "A cat is a small carnivore." in lines[3]
    total = trace.summary()
    assert lines[-1] == (f"2 calls, {total['prompt_tokens']} prompt + {total['completion_tokens']} completion tokens "
                         "(counts: 2 estimate), 1 tool calls")
    assert "latency" not in table and "latency s" in trace.table(latency=True)
    assert llm.Trace().table() == "(no model calls recorded)"


def test_trace_json_has_the_summary_and_abbreviated_calls(tmp_path):
    long_text = "word\n" * 200
    model = llm.ScriptedModel(["ok"], name="offline")
    with llm.Trace() as trace:
        model.chat([llm.user(long_text)])
    data = json.loads(trace.save(tmp_path / "trace.json").read_text())
    assert data["format"] == tracing.TRACE_FORMAT and data["summary"]["calls"] == 1
    sent = data["calls"][0]["messages"][0]["content"]
    assert len(sent) == 200 and sent.endswith("...")
    full = json.loads(trace.to_json(width=None))
    assert full["calls"][0]["messages"][0]["content"] == long_text
    assert set(data["calls"][0]) >= {"model", "messages", "tools", "tool_calls", "prompt_tokens",
                                     "completion_tokens", "token_source", "latency_s"}


def test_abbreviate_puts_text_on_one_line_within_the_width():
    assert tracing.abbreviate("a\n  b\nc") == "a | b | c"
    assert tracing.abbreviate("x" * 100, 10) == "xxxxxxx..."
    with pytest.raises(ValueError, match="width"):
        tracing.abbreviate("x", 2)


def test_trace_says_server_when_the_server_reported_the_counts():
    server = FakeOpenAIServer.replying({"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"word": "dog"}'}}]}}],
        "usage": {"prompt_tokens": 123, "completion_tokens": 17}})
    try:
        model = llm.OpenAICompatible(server.url, "tiny")
        with llm.Trace() as trace:
            model.chat([llm.user("What is a dog?")], tools=[lookup])
    finally:
        server.close()
    call = trace.calls[0]
    assert (call.model, call.prompt_tokens, call.completion_tokens, call.token_source) == ("tiny", 123, 17, "server")
    assert call.tool_calls == [{"id": "call_9", "name": "lookup", "arguments": {"word": "dog"}}]
    assert "(counts: 1 server)" in trace.table()


def test_the_same_tool_loop_runs_on_an_offline_model_and_on_a_server():
    """What notebook 11 promises: its loop works unchanged with either backend; only the token source differs."""
    server = FakeOpenAIServer.replying(*[
        {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [CALL.to_dict()]}}],
         "usage": {"prompt_tokens": 50, "completion_tokens": 9}},
        {"choices": [{"message": {"role": "assistant", "content": "A cat is a small carnivore."}}],
         "usage": {"prompt_tokens": 80, "completion_tokens": 7}}])
    offline = llm.ScriptedModel([llm.assistant("", tool_calls=[CALL]), "A cat is a small carnivore."])
    try:
        runs = {}
        for name, model in (("offline", offline), ("server", llm.OpenAICompatible(server.url, "tiny"))):
            with llm.Trace() as trace:
                runs[name] = (two_step_conversation(model), trace)
    finally:
        server.close()
    (offline_messages, offline_trace), (server_messages, server_trace) = runs["offline"], runs["server"]
    assert offline_messages == server_messages  # the same conversation, tool message and call id included
    assert [c.tool_calls for c in offline_trace.calls] == [c.tool_calls for c in server_trace.calls]
    assert [c.token_source for c in server_trace.calls] == ["server", "server"]
    assert [c.token_source for c in offline_trace.calls] == ["estimate", "estimate"]
    assert server.requests[1]["body"]["messages"][-1] == {"role": "tool", "content": "cat: a small domesticated carnivore",
                                                  "name": "lookup", "tool_call_id": "call_1"}
    assert server.requests[0]["body"]["tools"] == [llm.tool_schema(lookup)] and server.requests[0]["body"]["tool_choice"] == "auto"
    assert server.requests[1]["body"]["seed"] == 1
