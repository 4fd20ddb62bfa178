"""course.llm.sandbox's OS layers: code in the sandbox, tests an agent wrote included, cannot write
outside its working directory, start a process, signal another process or reach the network.

Each escape runs twice: with the audit hook (what every run gets) and with the hook turned off, to
see that the kernel-enforced layer behind it (seccomp, Landlock, a network namespace) holds by
itself. Where this machine lacks that layer the hook-off case is skipped with the reason, so the
suite passes on machines without them. All escapes of a run share one sandboxed process (a few s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from course.llm import aci, sandbox

LAYERS = sandbox.isolation_layers()


def _active(name):
    return LAYERS.get(name, "").startswith("active")


# name -> (layer that must stop it without the hook, code). {out} is a folder outside the workspace
# holding keep.txt; a process escape leaves proc_<name> in the workspace, a write escape anything in {out}.
ESCAPES = {
    "reimport_posixsubprocess": ("seccomp", """
import sys
del sys.modules['_posixsubprocess']
import _posixsubprocess, subprocess
subprocess._posixsubprocess = _posixsubprocess
subprocess.run(['/bin/sh', '-c', 'touch proc_reimport_posixsubprocess'])"""),
    "subprocess": ("seccomp", "import subprocess\nsubprocess.run(['touch', 'proc_subprocess'])"),
    "os_system": ("seccomp", "import os\nif os.system('touch proc_os_system') != 0: raise OSError('refused')"),
    "os_fork": ("seccomp", "import os\nif os.fork() == 0:\n    open('proc_os_fork', 'w').close()\n    os._exit(0)"),
    "posix_spawn": ("seccomp", "import os\nos.posix_spawn('/usr/bin/touch', ['touch', 'proc_posix_spawn'], dict())"),
    "multiprocessing": ("seccomp", """
import multiprocessing as mp
p = mp.get_context('fork').Process(target=lambda: open('proc_multiprocessing', 'w').close())
p.start(); p.join()"""),
    "ctypes_fork": ("seccomp", """
import ctypes
libc = ctypes.CDLL(None)
pid = libc.fork()
if pid == 0:
    open('proc_ctypes_fork', 'w').close(); libc._exit(0)
if pid < 0: raise OSError('fork refused')"""),
    "ctypes_execve": ("seccomp", """
import ctypes
libc = ctypes.CDLL(None)
argv = (ctypes.c_char_p * 4)(b'/bin/sh', b'-c', b'touch proc_ctypes_execve', None)
libc.execve(b'/bin/sh', argv, None)
raise OSError('execve refused')"""),
    "open_absolute": ("landlock", "open('{out}/w_open', 'w').write('x')"),
    "os_open_creat": ("landlock", "import os\nos.open('{out}/w_os_open', os.O_CREAT | os.O_WRONLY)"),
    "append_existing": ("landlock", "open('{out}/keep.txt', 'a').write('changed')"),
    "proc_self_root": ("landlock", "open('/proc/self/root{out}/w_proc_root', 'w').write('x')"),
    "proc_self_fd": ("landlock", """
import os
fd = os.open('{out}', os.O_RDONLY)
open(f'/proc/self/fd/{{fd}}/w_proc_fd', 'w').write('x')"""),
    "dir_fd": ("landlock", """
import os
fd = os.open('{out}', os.O_RDONLY)
os.open('w_dir_fd', os.O_CREAT | os.O_WRONLY, dir_fd=fd)"""),
    "symlink_out": ("landlock", "import os\nos.symlink('{out}/w_symlink', 'link')\nopen('link', 'w').write('x')"),
    "hardlink_in": ("landlock", "import os\nos.link('{out}/keep.txt', 'hard')\nopen('hard', 'a').write('changed')"),
    "rename_out": ("landlock", "import os\nopen('inside', 'w').close()\nos.rename('inside', '{out}/w_renamed')"),
    "remove_outside": ("landlock", "import os\nos.remove('{out}/keep.txt')"),
    "sqlite3": ("landlock", "import sqlite3\nsqlite3.connect('{out}/w_db.sqlite').execute('create table t(x)')"),
    "readline_history": ("landlock", "import readline\nreadline.write_history_file('{out}/w_history')"),
    "ctypes_open": ("landlock", """
import ctypes, os
libc = ctypes.CDLL(None)
if libc.open(b'{out}/w_ctypes', os.O_CREAT | os.O_WRONLY, 0o644) < 0: raise OSError('open refused')"""),
    "mknod_block_device": ("landlock", """
import os, stat
os.mknod('disk', stat.S_IFBLK | 0o600, os.makedev(7, 0))"""),
}

RUNNER = """
import sys
results = {{}}
for name, code in {escapes!r}.items():
    try:
        exec(compile(code, name, 'exec'), {{'__name__': 'escape'}})
        results[name] = 'ran'
    except BaseException as error:
        results[name] = f'{{type(error).__name__}}: {{error}}'
print(repr(results))
"""


def _run_escapes(tmp_path, hook, names):
    out = tmp_path / "outside"
    out.mkdir()
    (out / "keep.txt").write_text("keep\n")
    work = tmp_path / "work"
    work.mkdir()
    escapes = {name: ESCAPES[name][1].format(out=out) for name in names}
    old = sandbox._AUDIT_HOOK
    sandbox._AUDIT_HOOK = hook
    try:
        result = sandbox.run_python(RUNNER.format(escapes=escapes), workdir=work, timeout_s=20)
    finally:
        sandbox._AUDIT_HOOK = old
    return result, out, work


@pytest.fixture(scope="module")
def escape_runs(tmp_path_factory):
    runs = {}
    for hook in (True, False):
        names = [n for n, (layer, _) in ESCAPES.items() if hook or _active(layer)]
        runs[hook] = _run_escapes(tmp_path_factory.mktemp(f"hook{int(hook)}"), hook, names) + (names,)
    return runs


@pytest.mark.parametrize("hook", [True, False], ids=["with-hook", "kernel-only"])
@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_is_stopped(escape_runs, name, hook):
    layer = ESCAPES[name][0]
    if not hook and not _active(layer):
        pytest.skip(f"the {layer} layer is not available here: {LAYERS.get(layer)}")
    result, out, work, names = escape_runs[hook]
    assert name in names
    assert result.stdout.strip(), result.stderr
    outcome = eval(result.stdout.strip().splitlines()[-1])[name]  # noqa: S307  (our own repr)
    assert outcome != "ran", f"{name} ran: {result.stdout}"
    assert sorted(os.listdir(out)) == ["keep.txt"], f"{name} wrote outside: {os.listdir(out)} ({outcome})"
    assert (out / "keep.txt").read_text() == "keep\n", outcome
    assert not [p for p in os.listdir(work) if p.startswith("proc_")], f"a process started: {os.listdir(work)}"
    assert not (work / "disk").exists() or not (work / "disk").is_block_device()


@pytest.mark.parametrize("hook", [True, False], ids=["with-hook", "kernel-only"])
def test_no_signal_reaches_another_process(hook):
    if not hook and not _active("seccomp") and not _active("landlock"):
        pytest.skip(f"neither seccomp nor Landlock is available here: {LAYERS}")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    old = sandbox._AUDIT_HOOK
    sandbox._AUDIT_HOOK = hook
    try:
        result = sandbox.run_python(f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)", timeout_s=10)
        assert victim.poll() is None, "the sandbox killed a process outside it"
        assert not result.ok
    finally:
        sandbox._AUDIT_HOOK = old
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("hook", [True, False], ids=["with-hook", "kernel-only"])
def test_no_connection_to_a_server_on_this_machine(hook):
    if not hook and not _active("network") and not _active("landlock"):
        pytest.skip(f"neither a network namespace nor Landlock is available here: {LAYERS}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    old = sandbox._AUDIT_HOOK
    sandbox._AUDIT_HOOK = hook
    try:
        result = sandbox.run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert not result.ok
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        sandbox._AUDIT_HOOK = old
        server.close()


@pytest.mark.parametrize("hook", [True, False], ids=["with-hook", "kernel-only"])
def test_tests_an_agent_writes_run_confined(tmp_path, hook):
    """The issue's path: the agent writes tests/test_x.py through the ACI and run_tests runs it."""
    if not hook and not (_active("seccomp") and _active("landlock")):
        pytest.skip(f"seccomp and Landlock are both needed without the hook: {LAYERS}")
    out = tmp_path / "outside"
    out.mkdir()
    ws = aci.Workspace.from_files({"pkg.py": "X = 1\n"}, root=tmp_path / "ws")
    body = (f"import os, sys, sqlite3\n\ndef test_escape():\n"
            f"    for attempt in (lambda: open('{out}/w_test', 'w'), lambda: os.system('touch proc_test'),\n"
            f"                    lambda: sqlite3.connect('{out}/w_db').execute('create table t(x)')):\n"
            f"        try:\n            attempt()\n        except Exception:\n            pass\n")
    shell = aci.Shell(ws)
    assert shell.execute(f"cat > tests/test_x.py << 'EOF'\n{body}EOF") == ""
    old = sandbox._AUDIT_HOOK
    sandbox._AUDIT_HOOK = hook
    try:
        observation = shell.execute("run_tests")
    finally:
        sandbox._AUDIT_HOOK = old
    assert "1 passed" in observation, observation
    assert os.listdir(out) == [] and not (ws.root / "proc_test").exists()


def test_isolation_layers_says_which_layers_are_active_and_why_not():
    assert set(LAYERS) == set(sandbox.LAYERS)
    for name, state in LAYERS.items():
        assert state.startswith(("active: ", "unavailable: ")), (name, state)
    result = sandbox.run_python("print(1)")
    assert result.ok and result.isolation == LAYERS


def test_required_layers_stop_the_run_when_missing_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setenv("COURSE_SANDBOX_REQUIRE", "bogus")
    with pytest.raises(ValueError, match="unknown layers"):
        sandbox.run_python("pass")
    monkeypatch.setenv("COURSE_SANDBOX_REQUIRE", "all")
    result = sandbox.run_python("print('ran')")
    if all(state.startswith("active") for state in LAYERS.values()):
        assert result.ok and result.stdout == "ran\n"
    else:
        assert result.status == "blocked" and "required isolation layer" in result.message


def test_ordinary_code_still_runs_under_every_layer():
    code = ("import threading, numpy, json, tempfile, os\n"
            "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
            "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('x')\n"
            "os.makedirs('a/b'); open('a/b/c.txt', 'w').write('ok'); os.rename('a/b/c.txt', 'a/c.txt')\n"
            "print(numpy.arange(4).sum(), open('a/c.txt').read(), open('/dev/null', 'w').write('z'))\n")
    result = sandbox.run_python(code)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["6", "ok", "1"]
