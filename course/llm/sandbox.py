"""Run model-written Python in a subprocess with a time limit, a memory limit and its own directory.

:func:`run_python` writes any extra files into a fresh temporary directory (or a directory you
give it), starts ``python`` there in a new process group with a clean environment, and returns an
:class:`ExecResult` whose ``message`` is one plain sentence: it ran, it raised, it timed out, it ran
out of memory, it printed too much, or the sandbox blocked something. It never raises for anything
the code does. A small bootstrap runs in the child first: it sets the resource limits, installs the
audit hook, and only then compiles and runs the code (shown in tracebacks as ``main.py``).

What the sandbox does (and how):

* **Time**: the wall-clock limit kills the whole process group (SIGKILL) when it passes;
  ``RLIMIT_CPU`` is a second stop for CPU time.
* **Memory**: ``RLIMIT_AS`` caps the address space; an allocation past it raises ``MemoryError``.
* **Output**: stdout and stderr go to files capped by ``RLIMIT_FSIZE`` (any file the code writes
  is capped too); the caller gets at most ``max_output_chars`` of each, head and tail kept.
* **Writes stay in the working directory**: an audit hook (PEP 578), installed before the code
  runs, refuses to open a file for writing, create, delete, rename, link or change the mode of
  anything whose real path (symlinks resolved) is outside the working directory, refuses
  ``os.chdir`` out of it, and refuses to open a directory outside it (a directory descriptor would
  let ``dir_fd=`` calls write elsewhere). Symlinks and hard links cannot be created at all.
* **No new processes, no network, no native calls, no raised limits**: ``subprocess``,
  ``os.system``, ``os.exec*``, ``os.fork``, ``os.posix_spawn``, ``os.kill``, socket
  ``connect``/``bind``/``sendto``, ``ctypes`` and ``resource.setrlimit`` are refused (and
  ``_posixsubprocess.fork_exec``, which has no audit event, is replaced), so the code cannot start
  something the hook does not watch, nor lift its own limits.
* The environment is rebuilt from scratch (``HOME`` and ``TMPDIR`` point into the working
  directory; no variables of yours leak in) and ``PYTHONHASHSEED=0`` makes runs repeatable.

What it does **not** do, plainly:

* It does not stop *reading*: code can read any file your user can read (the standard library
  needs that), and print it.
* Audit hooks are not a security boundary. PEP 578 says so: code that sets out to escape (by
  corrupting interpreter memory, say) can. This sandbox keeps a well-meaning model's mistakes
  (a stray ``open('/home/you/x', 'w')``, ``shutil.rmtree('..')``, an infinite loop, a 10 GB list)
  from hurting your machine; for adversarial code use an OS sandbox (a container or VM with no
  network and a read-only file system, bubblewrap, nsjail).
* ``RLIMIT_NPROC`` is not set (it is per user and does not bind root); since process creation is
  refused by the hook, it is not needed for well-meaning code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# The bootstrap runs in the child before the learner's code: install the hook, then exec main.py.
_BOOTSTRAP = r'''
import os, resource, sys
_mem, _fsize, _cpu = (int(x) for x in sys.argv[1:4])
with open(sys.argv[4], encoding="utf-8") as _f:  # the code, read before the hook is installed
    _source = _f.read()
del _f
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_ALLOWED_WRITE = {"/dev/null"}
_REFUSED = {"subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.forkpty", "os.kill",
            "os.killpg", "signal.pthread_kill", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto",
            "socket.sendmsg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "resource.setrlimit",
            "resource.prlimit", "os.symlink", "os.link"}
# event -> (indices of path arguments, indices of dir_fd arguments)
_PATH_EVENTS = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                "os.rename": ((0, 1), (2, 3)), "os.truncate": ((0,), ()), "os.chmod": ((0,), (2,)),
                "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)), "os.chflags": ((0,), ()),
                "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
                "shutil.rmtree": ((0,), (1,)), "os.mkfifo": ((0,), (2,)), "os.mknod": ((0,), (3,))}
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"}

def _inside(path):
    if isinstance(path, int):
        return True  # an open descriptor: only obtainable through a checked open
    real = os.path.realpath(os.fsdecode(os.fspath(path)))
    return real in _ALLOWED_WRITE or real == _ROOT or real.startswith(_ROOT + os.sep)

def _deny(what):
    raise PermissionError("sandbox: " + what)

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                  (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            _deny(f"writing outside the working directory is not allowed: {os.fsdecode(os.fspath(path))}")
        if mode is None and not _inside(path) and os.path.isdir(path):
            _deny(f"opening a directory outside the working directory is not allowed: {os.fsdecode(os.fspath(path))}")
    elif event in _PATH_EVENTS:
        paths, fds = _PATH_EVENTS[event]
        for i in paths:
            if i < len(args) and args[i] is not None and not _inside(args[i]):
                _deny(f"{event} outside the working directory is not allowed: {args[i]}")
        for i in fds:
            if i < len(args) and isinstance(args[i], int) and args[i] >= 0:
                _deny(f"{event} with dir_fd is not allowed")
    elif event == "os.chdir":
        if not _inside(args[0]):
            _deny(f"changing directory out of the working directory is not allowed: {args[0]}")
    elif event in _REFUSED or event.startswith(("os.exec", "os.spawn")):
        _deny(f"{event} is not allowed (no new processes, links, network, native calls or limit changes)")
    elif event == "import" and args[0] in _BLOCKED_IMPORTS:
        raise ImportError(f"sandbox: importing {args[0]} is not allowed")

sys.addaudithook(_hook)
import _posixsubprocess  # noqa: E402  (subprocess starts children through it without an audit event)
def _no_fork_exec(*args, **kwargs):
    _deny("starting a process is not allowed")
_posixsubprocess.fork_exec = _no_fork_exec
del _no_fork_exec
sys.path.insert(0, _ROOT)
sys.argv = ["main.py"]
_code = compile(_source, "main.py", "exec")
_globals = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
del _source, _mem, _fsize, _cpu
exec(_code, _globals)
'''


@dataclass
class ExecResult:
    """What happened when code ran. ``status`` is one of ok, error, timeout, memory,
    output_limit, blocked, killed; ``message`` says it in a sentence."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    message: str
    truncated: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def feedback(self, limit: int = 1500) -> str:
        """The text an agent shows the model: exit status, then the output (tail of stderr on failure)."""
        out = self.stdout if self.ok else (self.stdout[-limit // 2:] + ("\n" if self.stdout else "") + self.stderr)
        out = out.strip()
        if len(out) > limit:
            out = "...\n" + out[-limit:]
        head = f"exitcode: {self.returncode if self.returncode is not None else 'killed'} ({self.message})"
        return head + (f"\n{out}" if out else "")


def _clip(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    head, tail = text[: limit // 2], text[-(limit - limit // 2):]
    return f"{head}\n[... {len(text) - limit} characters cut ...]\n{tail}", True


def _read(path: Path, limit_bytes: int) -> str:
    with path.open("rb") as f:
        data = f.read(limit_bytes)
        rest = f.seek(0, os.SEEK_END)
        if rest > limit_bytes:  # keep the tail too: the traceback is at the end
            f.seek(max(limit_bytes, rest - limit_bytes // 2))
            data = data[: limit_bytes // 2] + b"\n[... output cut ...]\n" + f.read()
    return data.decode("utf-8", errors="replace")


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 4000,
               max_file_mb: int = 16, files: Mapping[str, str] | None = None, stdin: str = "",
               workdir: str | Path | None = None) -> ExecResult:
    """Run ``code`` (shown in tracebacks as ``main.py``) with a working directory it may write in.

    By default that directory is fresh and deleted afterwards; pass ``workdir`` (an existing
    directory) to run in it and keep what the code writes there (an agent's workspace that lasts
    across commands). ``files`` maps relative file names to text written into the directory first
    (say, the module under test). ``ExecResult.files`` lists the directory's files afterwards.
    See the module docstring for what is and is not prevented.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 600:
        raise ValueError(f"timeout_s must be in (0, 600] seconds, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or not 64 <= memory_mb <= 65536:
        raise ValueError(f"memory_mb must be an int in [64, 65536], got {memory_mb!r}")
    if isinstance(max_output_chars, bool) or not isinstance(max_output_chars, int) or max_output_chars < 100:
        raise ValueError(f"max_output_chars must be an int >= 100, got {max_output_chars!r}")
    if isinstance(max_file_mb, bool) or not isinstance(max_file_mb, int) or not 1 <= max_file_mb <= 1024:
        raise ValueError(f"max_file_mb must be an int in [1, 1024], got {max_file_mb!r}")
    files = dict(files or {})
    for name, text in files.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise TypeError("files must map str file names to str contents")
        if not name or os.path.isabs(name) or ".." in Path(name).parts:
            raise ValueError(f"files: {name!r} must be a relative path inside the working directory")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be a str, got {type(stdin).__name__}")
    if workdir is not None:
        workdir = Path(workdir)
        if not workdir.is_dir():
            raise ValueError(f"workdir must be an existing directory, got {str(workdir)!r}")

    memory = memory_mb * 1024 * 1024
    fsize = max_file_mb * 1024 * 1024
    cpu = int(timeout_s) + 2

    with tempfile.TemporaryDirectory(prefix="course-sandbox-", ignore_cleanup_errors=True) as outer:
        work = Path(workdir).resolve() if workdir is not None else Path(outer) / "work"
        work.mkdir(exist_ok=True)
        code_path = Path(outer) / "code.py"
        code_path.write_text(code, encoding="utf-8")
        for name, text in files.items():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        out_path, err_path = Path(outer) / "stdout", Path(outer) / "stderr"
        env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin", "HOME": str(work),
               "TMPDIR": str(work), "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               "MPLCONFIGDIR": str(work / ".matplotlib")}
        start = time.perf_counter()
        timed_out = False
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-s", "-B", "-c", _BOOTSTRAP, str(memory), str(fsize), str(cpu),
                                     str(code_path)], cwd=work, env=env, stdin=subprocess.PIPE, stdout=out,
                                    stderr=err, start_new_session=True)
            try:
                proc.communicate(stdin.encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = time.perf_counter() - start
        listing = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        read_limit = 4 * max_output_chars
        stdout, cut_out = _clip(_read(out_path, read_limit), max_output_chars)
        stderr, cut_err = _clip(_read(err_path, read_limit), max_output_chars)
        size = max(out_path.stat().st_size, err_path.stat().st_size)

    code_ = proc.returncode
    if timed_out:
        status, message = "timeout", f"timed out after {timeout_s:g} s (time limit); the process was killed"
        code_ = None
    elif code_ == -signal.SIGXCPU:
        status, message = "timeout", f"stopped by the CPU-time limit ({cpu} s)"
    elif "MemoryError" in stderr:
        status, message = "memory", f"ran out of memory (limit {memory_mb} MB)"
    elif "File too large" in stderr or size >= fsize or code_ == -signal.SIGXFSZ:
        status, message = "output_limit", f"output or a file reached the {max_file_mb} MB limit; the program was stopped"
    elif "Error: sandbox:" in stderr:
        line = next((x for x in stderr.splitlines() if "Error: sandbox:" in x), "")
        status, message = "blocked", "the sandbox refused: " + line.split("sandbox:", 1)[1].strip()
    elif code_ is not None and code_ < 0:
        status, message = "killed", f"killed by signal {signal.Signals(-code_).name}"
    elif code_ != 0:
        last = next((x for x in reversed(stderr.strip().splitlines()) if x.strip()), "")
        status, message = "error", f"exited with code {code_}: {last.strip()[:200]}"
    else:
        status, message = "ok", "ran successfully"
    if status == "ok" and (cut_out or cut_err):
        message += f" (output cut to {max_output_chars} characters)"
    return ExecResult(status, code_, stdout, stderr, seconds, message, cut_out or cut_err, listing)
