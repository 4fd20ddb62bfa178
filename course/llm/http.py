"""Any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, Ollama, hosted APIs), stdlib only.

Configure with environment variables, or pass the same values as arguments::

    COURSE_LLM_BASE_URL   e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)
    COURSE_LLM_MODEL      the model name the server knows, e.g. qwen2.5-7b-instruct
    COURSE_LLM_API_KEY    only if the server wants one (sent as "Authorization: Bearer ...")

``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` are read when the COURSE_ variables are unset. The
request is ``POST {base_url}/chat/completions`` with ``model``, ``messages``, ``temperature``
and, when given, ``max_tokens``, ``stop``, ``tools``, ``tool_choice``, ``response_format`` and
``seed``. The reply's ``tool_calls`` become :class:`~course.llm.chat.ToolCall` objects (id, name,
arguments parsed from their JSON string) on ``reply.message``; ``tool`` messages sent back carry
their ``tool_call_id``. Token counts come from the reply's ``usage`` field (``Usage.source ==
"server"``), and are estimated with :func:`course.llm.chat.approx_tokens` when a server leaves it
out (``"estimate"``).

Errors become :class:`~course.llm.chat.LLMError` with a sentence that says what happened: no
server at that address, a time-out, an HTTP error with the start of its body, or a reply that
is not a chat completion. Status 429 and 5xx are retried ``max_retries`` times with exponential
back-off; nothing else is.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

from .chat import ChatModel, Completion, LLMError, Message, ToolCall

RETRY_STATUS = {429, 500, 502, 503, 504}


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class OpenAICompatible(ChatModel):
    """A chat model behind an OpenAI-compatible HTTP API."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = 120.0, max_retries: int = 2, retry_wait_s: float = 1.0, **kwargs) -> None:
        base_url = base_url or _env("COURSE_LLM_BASE_URL", "OPENAI_BASE_URL")
        model = model or _env("COURSE_LLM_MODEL")
        if not base_url:
            raise LLMError("no model server configured: set COURSE_LLM_BASE_URL (e.g. http://127.0.0.1:8000/v1) "
                           "and COURSE_LLM_MODEL, or pass base_url= and model=")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise LLMError("no model name: set COURSE_LLM_MODEL (the name your server lists at /v1/models) "
                           "or pass model=")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not isinstance(retry_wait_s, (int, float)) or retry_wait_s < 0:
            raise ValueError(f"retry_wait_s must be a number >= 0, got {retry_wait_s!r}")
        super().__init__(name=kwargs.pop("name", model), **kwargs)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key or _env("COURSE_LLM_API_KEY", "OPENAI_API_KEY")
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.retry_wait_s = float(retry_wait_s)
        self.description = f"OpenAI-compatible server at {self.base_url}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _opener(self) -> urllib.request.OpenerDirector:
        """Loopback servers are reached directly, never through an http_proxy from the environment."""
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener()

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with self._opener().open(request, timeout=self.timeout_s) as response:
                    text = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", errors="replace")[:300]
                if error.code in RETRY_STATUS and attempt < self.max_retries:
                    time.sleep(self.retry_wait_s * 2 ** attempt)
                    continue
                raise LLMError(f"{self.url} answered HTTP {error.code} {error.reason}: {detail}") from None
            except (TimeoutError, socket.timeout):
                raise LLMError(f"{self.url} did not answer within {self.timeout_s:g} s "
                               "(raise timeout_s for slow local models)") from None
            except urllib.error.URLError as error:
                if isinstance(error.reason, (TimeoutError, socket.timeout)):
                    raise LLMError(f"{self.url} did not answer within {self.timeout_s:g} s") from None
                raise LLMError(f"could not reach {self.url}: {error.reason}; is the server running "
                               "and COURSE_LLM_BASE_URL right?") from None
            except (ConnectionError, OSError) as error:
                raise LLMError(f"connection to {self.url} failed: {error}") from None
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise LLMError(f"{self.url} did not answer with JSON: {text[:200]!r}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _complete(self, messages: list[Message], *, max_tokens: int | None, stop: Sequence[str] | None,
                  temperature: float, **options: Any) -> Completion:
        payload: dict[str, Any] = {"model": self.model, "messages": [m.to_dict() for m in messages],
                                   "temperature": temperature}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if stop:
            payload["stop"] = list(stop)
        for key in ("tools", "tool_choice", "response_format", "seed"):
            if options.get(key) is not None:
                payload[key] = options[key]
        data = self._post(payload)
        message = self._message(data)
        usage = data.get("usage") if isinstance(data, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        n_in, n_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not _count(n_in) or not _count(n_out):
            return Completion(message, None, None, data, "estimate")  # estimated by ChatModel.chat
        return Completion(message, n_in, n_out, data, "server")

    def _message(self, data: Any) -> Message:
        """The assistant message of a chat completion: its text and its tool calls, checked."""
        try:
            message = data["choices"][0]["message"]
            content = message["content"] if "content" in message or not message.get("tool_calls") else None
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.url} answered without choices[0].message.content: {json.dumps(data)[:200]}") from None
        if content is None:  # some servers send null content with a tool call or a refusal
            content = ""
        if not isinstance(content, str):
            raise LLMError(f"{self.url}: choices[0].message.content is {type(content).__name__}, not text")
        raw_calls = message.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise LLMError(f"{self.url}: choices[0].message.tool_calls is {type(raw_calls).__name__}, not a list")
        try:
            calls = tuple(ToolCall.from_dict(c, f"tool_calls[{i}]") for i, c in enumerate(raw_calls))
        except (ValueError, TypeError) as error:
            raise LLMError(f"{self.url} sent a malformed tool call: {error}") from None
        return Message("assistant", content, None, calls)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
