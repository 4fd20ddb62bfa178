"""Starting, watching and stopping the local rank processes (one per rank, on this machine)."""

from __future__ import annotations

import datetime
import os
import re
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as tdist

from .worker import WHERE_SIGNAL, _send

def _loopback_interface() -> str | None:
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except OSError:
        pass
    return None


def _choose_backend(backend: str, world_size: int) -> str:
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if backend == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < world_size):
        raise ValueError(f"backend='nccl' needs one GPU per rank: {world_size} ranks, "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s)")
    return backend


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)



_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<name>\S+)')


def _summarize_stack(text: str) -> tuple[str, str]:
    """``('all_reduce, called at <cell>, line 7 in f', stack)`` from a faulthandler dump (innermost first)."""
    block = text[text.rfind("most recent call first"):]
    frames = [m.groupdict() for m in _FRAME.finditer(block)]
    here = os.path.dirname(os.path.abspath(__file__))
    op, caller = None, None
    for frame in frames:
        path = frame["file"].replace(os.sep, "/")
        if "torch/distributed/" in path:
            if frame["name"] not in ("wrapper", "<lambda>"):
                op = frame["name"]  # the outermost torch.distributed function: the one the code called
        elif os.path.dirname(os.path.abspath(frame["file"])) != here and "/torch/" not in path:
            caller = f'{frame["file"]}, line {frame["line"]} in {frame["name"]}'
            break
    stack = "\n".join(f'  File "{f["file"]}", line {f["line"]} in {f["name"]}' for f in reversed(frames)
                      if os.path.dirname(os.path.abspath(f["file"])) != here)
    if op:
        summary = f"waiting in torch.distributed.{op}" + (f", called at {caller}" if caller else "")
    else:
        summary = "running " + (caller or "(no Python frame)")
    return summary, stack


class _LocalProcesses:
    """The process side of :class:`~course.dist.Ranks`: start the rank processes, wait until they
    joined the group, rebuild the group, and kill them. :class:`Ranks` sets the attributes."""

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="course-dist-")
        self._store = tdist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False,
                                     timeout=datetime.timedelta(seconds=self.start_timeout))
        env = dict(os.environ)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            env.pop(key, None)
        env.update({"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                    "PYTHONUNBUFFERED": "1", "COURSE_DIST_RANK_PROCESS": "1"})
        interface = _loopback_interface()
        if interface and self.backend == "gloo":
            env["GLOO_SOCKET_IFNAME"] = interface  # gloo talks over 127.0.0.1 only
        if self.debug:  # torch checks that every rank calls the same collective with the same shapes
            env["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
        bootstrap = "import sys; from course.dist import _worker_main; _worker_main()"
        self.starts += 1
        self._generation = 0
        self._needs_reinit = False
        try:
            for rank in range(self.world_size):
                parent_end, child_end = socket.socketpair()
                log_path = os.path.join(self._tmp.name, f"rank{rank}.log")
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen([sys.executable, "-c", bootstrap, str(child_end.fileno()),
                                             str(os.getpid())], pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                child_end.close()
                conn = Connection(parent_end.detach())
                config = {"rank": rank, "world_size": self.world_size, "backend": self.backend, "host": "127.0.0.1",
                          "port": self._store.port, "threads": self.threads, "sys_path": list(sys.path),
                          "start_timeout": self.start_timeout, "collective_timeout": max(self.timeout, 60.0)}
                conn.send_bytes(pickle.dumps(config))
                self._procs.append(proc)
                self._conns.append(conn)
                self._logs.append(log_path)
        except BaseException:
            self._kill()
            raise
        self._ready = False

    def _wait_ready(self, timeout: float | None = None) -> None:
        if self._ready:
            return
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        waiting = set(range(self.world_size))
        try:
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failure("timeout", {r: f"rank {r} did not start within {timeout:g} s"
                                                    for r in waiting}, {}, [""] * self.world_size)
                for conn in wait([self._conns[r] for r in waiting], timeout=left):
                    rank = self._conns.index(conn)
                    try:
                        message = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        raise self._failure("died", {rank: f"rank {rank} died while starting "
                                                           f"(exit code {self._exit_code(rank)})"},
                                             {}, [""] * self.world_size) from None
                    if message[0] == "ready":
                        waiting.discard(rank)
        except BaseException:
            self._kill()
            raise
        self._ready = True

    def _reinit(self) -> None:
        """Rebuild the process group in the same processes after a run in which ranks raised."""
        self._generation += 1
        for conn in self._conns:
            _send(conn, ("reinit", self._generation))
        self._ready = False
        self._needs_reinit = False
        self._wait_ready(timeout=min(self.start_timeout, 30.0))

    def _exit_code(self, rank: int) -> int | None:
        try:
            return self._procs[rank].wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    def _log_tail(self, rank: int, lines: int = 8) -> str:
        try:
            with open(self._logs[rank], errors="replace") as f:
                text = f.read().splitlines()
        except (OSError, IndexError):
            return ""
        text = [t for t in text if not t.startswith("course: ")]
        return "\n".join(text[-lines:])

    def _where(self, ranks) -> dict[int, tuple[str, str]]:
        """Where each of ``ranks`` is now: ``{rank: (summary, stack)}``, e.g. ``('all_reduce, called at
        <cell>, line 7 in f', '  File ...')``. Each rank prints its stack to its log on WHERE_SIGNAL
        (faulthandler, which works while the rank is blocked inside a collective)."""
        sizes = {}
        for rank in ranks:
            try:
                sizes[rank] = os.path.getsize(self._logs[rank])
                os.kill(self._procs[rank].pid, WHERE_SIGNAL)
            except (OSError, IndexError):
                pass
        where, deadline = {}, time.monotonic() + 1.0
        while sizes and time.monotonic() < deadline and len(where) < len(sizes):
            time.sleep(0.05)
            for rank, size in sizes.items():
                try:
                    with open(self._logs[rank], errors="replace") as f:
                        f.seek(size)
                        text = f.read()
                except OSError:
                    continue
                if "most recent call first" in text and text.endswith("\n"):
                    where[rank] = _summarize_stack(text)
        return where

    def _kill(self) -> None:
        """Stop every rank process now (SIGKILL), and forget them; the next run starts new ones."""
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
        self._procs, self._conns = [], []
        self._store = None
        self._ready = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._logs = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)
