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

Behind the hook, kernel-enforced layers (:data:`LAYERS`; applied by the child, through ``ctypes``,
before the hook and the code; each is tried, and :attr:`ExecResult.isolation` and
:func:`isolation_layers` say which are active here and why any is not):

* ``network``: a new network namespace (no interfaces; a user namespace too when not root).
* ``capabilities``: ``no_new_privs`` set and every capability dropped, so root keeps its uid but
  not its powers (no mounts, device nodes, clock, reboot, raw I/O).
* ``landlock`` (Linux 5.13+, unprivileged): creating, writing, truncating, renaming, linking and
  deleting files is refused everywhere but beneath the working directory (and ``/dev/null``);
  device nodes cannot be made even inside; ``execve`` is refused; from ABI 4 TCP connect and bind,
  from ABI 6 signals and abstract unix sockets outside the sandbox. This holds for anything in the
  process: native code, ``sqlite3``, ``readline``, ``/proc/self/...`` paths, symlinks, ``dir_fd``.
* ``seccomp`` (x86_64 and aarch64): ``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``
  (``clone3`` answers ENOSYS so glibc uses ``clone``), ``execve``, signals to any process but itself,
  and the mount, namespace, ptrace, bpf, module, kexec, keyring and io_uring calls fail with EPERM.
  Threads work. So no process can be started, by any route (``_posixsubprocess`` re-imported,
  ``ctypes`` calling libc, ``multiprocessing``).

Set ``COURSE_SANDBOX_REQUIRE=all`` (or a comma list of layers) to make a run stop, ``blocked``,
where a layer is unavailable instead of falling back on the hook. docs/sandbox.md has the threat model.

What it does **not** do, plainly:

* It does not stop *reading*: code can read any file your user can read (the standard library
  needs that), and print it.
* Where the kernel layers are unavailable (no Landlock, seccomp refused, another architecture),
  only the audit hook stands, and audit hooks are not a security boundary: PEP 578 says so, and
  code that sets out to escape (by corrupting interpreter memory, say) can. The hook keeps a
  well-meaning model's mistakes (a stray ``open('/home/you/x', 'w')``, ``shutil.rmtree('..')``)
  from hurting your machine and gives clear messages; the kernel layers hold against code that
  tries. Neither is a VM: a kernel bug is out of scope.
* There is no mount or PID namespace: files stay visible read-only, and with process creation
  refused there are no children to contain. ``RLIMIT_NPROC`` is not set (it is per user and does
  not bind root).
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
_ROOT = os.path.realpath(os.getcwd())
# ---- OS layers (kernel-enforced), applied before the audit hook; see the module docstring ----
def _apply_layers(root, wanted, required, status_path):
    import ctypes, errno, platform, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    machine = platform.machine()
    nr = {"x86_64": dict(landlock_create_ruleset=444, landlock_add_rule=445, landlock_restrict_self=446,
                         unshare=272, capset=126),
          "aarch64": dict(landlock_create_ruleset=444, landlock_add_rule=445, landlock_restrict_self=446,
                          unshare=97, capset=91)}.get(machine)
    layers = {}
    status = open(status_path, "w", encoding="utf-8")  # opened before Landlock closes the folder to writes

    def fail(name, why):
        layers[name] = "unavailable: " + why

    def err():
        e = ctypes.get_errno()
        return f"{errno.errorcode.get(e, e)} ({os.strerror(e)})"

    if nr is None:
        for name in ("network", "capabilities", "landlock", "seccomp"):
            if name in wanted:
                fail(name, f"no syscall table for {machine}")
    # 1. network namespace: no interfaces but a loopback that is down
    if nr and "network" in wanted:
        CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
        if libc.syscall(nr["unshare"], CLONE_NEWNET) == 0:
            layers["network"] = "active: a new network namespace (no interfaces)"
        else:
            first = err()
            uid, gid = os.getuid(), os.getgid()
            if libc.syscall(nr["unshare"], CLONE_NEWNET | CLONE_NEWUSER) == 0:
                try:
                    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                        with open(f"/proc/self/{name}", "w") as f:
                            f.write(text)
                    layers["network"] = "active: a new user and network namespace (no interfaces)"
                except OSError as e:
                    layers["network"] = f"active: a new user and network namespace (no interfaces; id maps not written: {e})"
            else:
                fail("network", f"unshare(CLONE_NEWNET) refused: {first}; with a user namespace: {err()}")
    # 2. no new privileges (Landlock and seccomp need it; setuid programs stop working), then drop capabilities
    if nr and ({"landlock", "seccomp", "capabilities"} & set(wanted)):
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if nr and "capabilities" in wanted:
        for cap in range(64):
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (fails harmlessly without CAP_SETPCAP or past the last)
        header = struct.pack("Ii", 0x20080522, 0)
        data = ctypes.create_string_buffer(24)  # two zeroed {effective, permitted, inheritable}
        if libc.syscall(nr["capset"], ctypes.c_char_p(header), data) == 0:
            layers["capabilities"] = "active: every capability dropped (root keeps its uid, not its powers)"
        else:
            fail("capabilities", f"capset refused: {err()}")
    # 3. Landlock: writes (create, delete, rename, truncate, write) only beneath the workspace and to /dev/null
    if nr and "landlock" in wanted:
        abi = libc.syscall(nr["landlock_create_ruleset"], None, 0, 1)
        if abi < 1:
            fail("landlock", f"the kernel has no Landlock: {err()}")
        else:
            WRITE_FILE, TRUNCATE, IOCTL_DEV, EXECUTE = 1 << 1, 1 << 14, 1 << 15, 1 << 0
            writes = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)) | ((1 << 13) if abi >= 2 else 0) \
                | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)
            handled = writes | EXECUTE
            net = 0b11 if abi >= 4 else 0  # TCP bind and connect, no port allowed
            scoped = 0b11 if abi >= 6 else 0  # signals and abstract unix sockets stay inside the domain
            attr = struct.pack("QQQ", handled, net, scoped) if abi >= 6 else struct.pack("QQ", handled, net) \
                if abi >= 4 else struct.pack("Q", handled)
            ruleset = libc.syscall(nr["landlock_create_ruleset"], ctypes.c_char_p(attr), len(attr), 0)
            if ruleset < 0:
                fail("landlock", f"landlock_create_ruleset refused: {err()}")
            else:
                ok, why = True, ""
                in_workspace = writes & ~((1 << 6) | (1 << 11))  # no device nodes, even inside
                for path, allowed in ((root, in_workspace), ("/dev/null", WRITE_FILE | (TRUNCATE if abi >= 3 else 0))):
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                    rule = struct.pack("=Qi", allowed, fd)
                    if libc.syscall(nr["landlock_add_rule"], ruleset, 1, ctypes.c_char_p(rule), 0) != 0:
                        ok, why = False, f"landlock_add_rule({path}) refused: {err()}"
                    os.close(fd)
                if ok and libc.syscall(nr["landlock_restrict_self"], ruleset, 0) != 0:
                    ok, why = False, f"landlock_restrict_self refused: {err()}"
                os.close(ruleset)
                if ok:
                    layers["landlock"] = (f"active: Landlock ABI {abi}: writes only beneath the workspace and to "
                                          "/dev/null, no execve" + ("; no TCP bind/connect" if net else "")
                                          + ("; no signals or abstract sockets outside" if scoped else ""))
                else:
                    fail("landlock", why)
    # 4. seccomp: no new process (fork, vfork, clone without CLONE_THREAD, execve), no signals to others,
    #    no namespace, mount, ptrace, module, kexec, bpf, keyring or io_uring calls
    if nr and "seccomp" in wanted:
        pid = os.getpid()
        if machine == "x86_64":
            arch, deny = 0xC000003E, dict(fork=57, vfork=58, execve=59, execveat=322, ptrace=101, tkill=200,
                process_vm_readv=310, process_vm_writev=311, mount=165, umount2=166, pivot_root=155, chroot=161,
                unshare=272, setns=308, bpf=321, keyctl=250, add_key=248, request_key=249, perf_event_open=298,
                userfaultfd=323, init_module=175, finit_module=313, delete_module=176, kexec_load=246,
                kexec_file_load=320, open_by_handle_at=304, reboot=169, rt_sigqueueinfo=129,
                rt_tgsigqueueinfo=297, iopl=172, ioperm=173, swapon=167, swapoff=168)
            clone, kill, tgkill = 56, 62, 234
        else:
            arch, deny = 0xC00000B7, dict(execve=221, execveat=281, ptrace=117, tkill=130, process_vm_readv=270,
                process_vm_writev=271, mount=40, umount2=39, pivot_root=41, chroot=51, unshare=97, setns=268,
                bpf=280, keyctl=219, add_key=217, request_key=218, perf_event_open=241, userfaultfd=282,
                init_module=105, finit_module=273, delete_module=106, kexec_load=104, kexec_file_load=294,
                open_by_handle_at=265, reboot=142, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, swapon=224,
                swapoff=225)
            clone, kill, tgkill = 220, 129, 131
        common = dict(pidfd_send_signal=424, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                      open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
                      mount_setattr=442)
        ALLOW, KILL = 0x7FFF0000, 0x80000000
        EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
        prog = [("ld", 4), ("jeq", arch, None, "kill"), ("ld", 0)]
        if machine == "x86_64":
            prog.append(("jge", 0x40000000, "eperm", None))  # the x32 ABI's numbers
        for number in list(deny.values()) + list(common.values()):
            prog.append(("jeq", number, "eperm", None))
        prog += [("jeq", 435, "enosys", None),  # clone3: glibc falls back to clone, whose flags can be read
                 ("jeq", clone, "clone", None), ("jeq", kill, "kill_", None), ("jeq", tgkill, "tgkill", None),
                 ("ret", ALLOW),  # (BPF jumps only forward: the checks first, the verdicts last)
                 "clone", ("ld", 16), ("jset", 0x00010000, "allow", "eperm"),  # CLONE_THREAD: a thread
                 "kill_", ("ld", 20), ("jeq", 0, None, "eperm"), ("ld", 16), ("jeq", pid, "allow", None),
                 ("jeq", 0, "allow", "eperm"),
                 "tgkill", ("ld", 20), ("jeq", 0, None, "eperm"), ("ld", 16), ("jeq", pid, "allow", "eperm"),
                 "allow", ("ret", ALLOW), "eperm", ("ret", EPERM), "enosys", ("ret", ENOSYS), "kill", ("ret", KILL)]
        labels, code = {}, []
        for item in prog:
            if isinstance(item, str):
                labels[item] = len(code)
            else:
                code.append(item)
        raw = b""
        for i, ins in enumerate(code):
            if ins[0] == "ld":
                raw += struct.pack("HBBI", 0x20, 0, 0, ins[1])
            elif ins[0] == "ret":
                raw += struct.pack("HBBI", 0x06, 0, 0, ins[1])
            else:
                op = {"jeq": 0x15, "jge": 0x35, "jset": 0x45}[ins[0]]
                jt = 0 if ins[2] is None else labels[ins[2]] - i - 1
                jf = 0 if ins[3] is None else labels[ins[3]] - i - 1
                raw += struct.pack("HBBI", op, jt, jf, ins[1])
        buf = ctypes.create_string_buffer(raw, len(raw))
        fprog = struct.pack("HxxxxxxP", len(code), ctypes.addressof(buf))
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong]
        if libc.prctl(22, 2, fprog, 0, 0) == 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            layers["seccomp"] = ("active: seccomp-bpf: no fork, vfork, execve or new process (threads only), "
                                 "no signals to other processes, no mount, namespace, ptrace or io_uring calls")
        else:
            fail("seccomp", f"prctl(PR_SET_SECCOMP) refused: {err()}")
    for name in wanted:
        layers.setdefault(name, "unavailable: not tried")
    with status:
        for name, state in layers.items():
            status.write(f"{name}\t{state}\n")
    missing = [f"{name} ({layers[name]})" for name in required if not layers.get(name, "").startswith("active")]
    if missing:
        print("PermissionError: sandbox: a required isolation layer is not available here: " + "; ".join(missing),
              file=sys.stderr)
        os._exit(1)
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
_apply_layers(_ROOT, [x for x in sys.argv[5].split(",") if x], [x for x in sys.argv[6].split(",") if x], sys.argv[7])
del _apply_layers
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
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
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters", "readline",
                    "_posixsubprocess"}  # the last: re-importing it would bring back the real fork_exec

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
    elif event == "sqlite3.connect":
        database = args[0]
        if isinstance(database, (str, bytes, os.PathLike)) and os.fsdecode(database) != ":memory:" \
                and not os.fsdecode(database).startswith("file:") and not _inside(database):
            _deny(f"sqlite3.connect outside the working directory is not allowed: {os.fsdecode(database)}")
        if isinstance(database, (str, bytes)) and os.fsdecode(database).startswith("file:"):
            _deny("sqlite3 URI file names are not allowed; give a relative path")
    elif event == "os.chdir":
        if not _inside(args[0]):
            _deny(f"changing directory out of the working directory is not allowed: {args[0]}")
    elif event in _REFUSED or event.startswith(("os.exec", "os.spawn")):
        _deny(f"{event} is not allowed (no new processes, links, network, native calls or limit changes)")
    elif event == "import" and args[0] in _BLOCKED_IMPORTS:
        raise ImportError(f"sandbox: importing {args[0]} is not allowed")

import _posixsubprocess  # noqa: E402  (subprocess starts children through it without an audit event)
if sys.argv[8] == "hook":  # (tests turn the hook off to see that the kernel layers hold by themselves)
    sys.addaudithook(_hook)
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
    isolation: dict[str, str] = field(default_factory=dict)  # OS layer -> "active: ..." or "unavailable: why"

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


LAYERS = ("network", "capabilities", "landlock", "seccomp")
"""The kernel-enforced layers the child tries, in order (see the module docstring)."""


def _required_layers() -> list[str]:
    """Layers named in ``COURSE_SANDBOX_REQUIRE`` (comma-separated, or ``all``): a run stops, blocked, without them."""
    text = os.environ.get("COURSE_SANDBOX_REQUIRE", "").strip()
    names = list(LAYERS) if text == "all" else [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in LAYERS]
    if unknown:
        raise ValueError(f"COURSE_SANDBOX_REQUIRE names unknown layers {unknown}; known: {', '.join(LAYERS)}")
    return names


_ISOLATION: dict[str, str] | None = None
_AUDIT_HOOK = True  # False only in tests: they check that the kernel layers hold without the hook


def isolation_layers(refresh: bool = False) -> dict[str, str]:
    """Which OS isolation layers a sandboxed run gets on this machine, measured by one short run (cached).

    Maps each of :data:`LAYERS` to ``"active: what it enforces"`` or ``"unavailable: why"``. The audit
    hook is always there besides these; where a layer is unavailable its guarantee rests on the hook alone.
    """
    global _ISOLATION
    if _ISOLATION is None or refresh:
        _ISOLATION = dict(run_python("pass", timeout_s=30).isolation)
    return dict(_ISOLATION)


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

    required = _required_layers()
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
                                     str(code_path), ",".join(LAYERS), ",".join(required),
                                     str(Path(outer) / "layers"), "hook" if _AUDIT_HOOK else "no-hook"],
                                    cwd=work, env=env, stdin=subprocess.PIPE, stdout=out,
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
        layers_path = Path(outer) / "layers"
        isolation = dict(line.split("\t", 1) for line in layers_path.read_text(encoding="utf-8").splitlines()
                         if "\t" in line) if layers_path.exists() else {}

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
    return ExecResult(status, code_, stdout, stderr, seconds, message, cut_out or cut_err, listing, isolation)
