"""The pool of ranks that a notebook runs functions on: :class:`Ranks`, :func:`pool`, :func:`shutdown`."""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import tempfile
import time
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable

from . import torchrun as _torchrun
from .pickling import dumps
from .processes import _LocalProcesses, _choose_backend, _positive
from .results import RankFailed, RunResult, make_failure
from .traffic import Traffic
from .worker import _send

DEFAULT_TIMEOUT = 120.0  # seconds a run may take before every rank is stopped
DEFAULT_START_TIMEOUT = 180.0  # seconds for the ranks to start (4 processes importing torch on 2 cores)
DEFAULT_GRACE = 3.0  # seconds the other ranks get to finish after one raised



class Ranks(_LocalProcesses):
    """``world_size`` ranks in one process group, kept alive between runs.

    ``Ranks(4)`` starts four processes on this machine and returns at once; the first
    :meth:`run` waits until they have joined the group. Under torchrun it joins torchrun's group
    instead (``world_size`` then must match or be None). Close with :meth:`close` (or a ``with``
    block); :func:`pool` keeps one shared, cached instance per size.
    """

    def __init__(self, world_size: int | None = 4, *, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                 start_timeout: float = DEFAULT_START_TIMEOUT, grace: float = DEFAULT_GRACE,
                 threads_per_rank: int = 1, debug: bool = False) -> None:
        self.torchrun = _torchrun.under_torchrun()
        if self.torchrun:
            env_size = int(os.environ["WORLD_SIZE"])
            if world_size is not None and world_size != env_size:
                raise ValueError(f"world_size={world_size} but torchrun started {env_size} ranks; pass None")
            world_size = env_size
        if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= 64:
            raise ValueError(f"world_size must be an int in [1, 64], got {world_size!r}")
        if isinstance(threads_per_rank, bool) or not isinstance(threads_per_rank, int) or threads_per_rank < 1:
            raise ValueError(f"threads_per_rank must be an int >= 1, got {threads_per_rank!r}")
        self.world_size = world_size
        self.timeout = _positive("timeout", timeout)
        self.start_timeout = _positive("start_timeout", start_timeout)
        self.grace = _positive("grace", grace)
        self.threads = threads_per_rank
        self.debug = bool(debug)  # TORCH_DISTRIBUTED_DEBUG=DETAIL on the ranks: a mismatched collective raises at once
        self.requested_backend = backend
        self.backend = _choose_backend(backend, world_size) if not self.torchrun else None
        self.starts = 0  # how many times processes were started (a test reads it)
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._logs: list[str] = []
        self._store = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._ready = False
        self._generation = 0
        self._needs_reinit = False
        self._closed = False
        self._torchrun_runs = 0
        if self.torchrun:
            self._join_torchrun(backend)
        else:
            self._start()
        _LIVE.add(self)

    # -- starting and stopping ----------------------------------------------------------------

    def close(self) -> None:
        """Stop the ranks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.torchrun:
            for conn in self._conns:
                try:
                    _send(conn, ("exit",))
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            for proc in self._procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            self._kill()
        _LIVE.discard(self)

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self.torchrun:
                self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        where = "torchrun" if self.torchrun else ("running" if self.alive else "stopped")
        return f"Ranks(world_size={self.world_size}, backend={self.backend}, {where})"

    # -- running --------------------------------------------------------------------------------

    def run(self, fn: Callable, *args, timeout: float | None = None, **kwargs) -> RunResult:
        """Call ``fn(*args, **kwargs)`` on every rank; return each rank's result, output and traffic.

        ``timeout`` (seconds; default the pool's) bounds the whole run. Raises :class:`RankFailed`
        when a rank raises, dies or runs out of time (see the module's docstring).
        """
        if self._closed:
            raise RuntimeError("this Ranks was closed; make a new one (or use dist.pool())")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        limit = self.timeout if timeout is None else _positive("timeout", timeout)
        if self.torchrun:
            return self._run_torchrun(fn, args, kwargs)
        payload = dumps((fn, args, kwargs))  # refuses unsendable globals before anything starts
        if not self.alive:
            self._kill()
            self._start()
        if self._needs_reinit:
            self._reinit()
        self._wait_ready()
        return self._run_local(payload, limit)

    def _run_local(self, payload: bytes, limit: float) -> RunResult:
        n = self.world_size
        replies: dict[int, tuple] = {}
        start = time.monotonic()
        try:
            message = pickle.dumps(("run", payload), protocol=pickle.HIGHEST_PROTOCOL)
            for conn in self._conns:
                conn.send_bytes(message)
            first_error: float | None = None
            while len(replies) < n:
                now = time.monotonic()
                deadline = start + limit if first_error is None else min(start + limit, first_error + self.grace)
                pending = [self._conns[r] for r in range(n) if r not in replies]
                ready = wait(pending, timeout=max(0.0, deadline - now))
                if not ready:
                    stdout = [replies[r][3] if r in replies else "" for r in range(n)]
                    failures = {r: replies[r][2] for r in replies if not replies[r][1]}
                    types_ = {r: replies[r][7] for r in failures}
                    stuck = [r for r in range(n) if r not in replies]
                    where = self._where(stuck)  # before they are stopped: where is each one waiting?
                    waiting = {r: where[r][0] for r in where}
                    if first_error is None:
                        for r in stuck:
                            failures[r] = (f"rank {r} did not finish within the {limit:g} s time limit"
                                           + _at(where.get(r)))
                        raise self._failure("timeout", failures, types_, stdout, waiting=waiting,
                                            finished=sorted(replies), limit=limit)
                    for r in stuck:
                        failures[r] = (f"rank {r} was still running {self.grace:g} s after rank(s) failed"
                                       + _at(where.get(r)))
                    raise self._failure("raised", failures, types_, stdout, stopped=stuck, waiting=waiting)
                for conn in ready:
                    rank = self._conns.index(conn)
                    try:
                        reply = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        stdout = [replies[r][3] if r in replies else "" for r in range(n)]
                        failures = {r: replies[r][2] for r in replies if not replies[r][1]}
                        code = self._exit_code(rank)
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        tail = self._log_tail(rank)
                        failures[rank] = (f"rank {rank} died ({how}) without reporting a result"
                                          + (f"; its last output:\n{tail}" if tail else ""))
                        others = [r for r in range(n) if r not in replies and r != rank]
                        where = self._where(others)  # where the others wait, before they are stopped
                        for r in others:
                            failures[r] = f"rank {r} was still running when rank {rank} died" + _at(where.get(r))
                        raise self._failure("died", failures, {r: replies[r][7] for r in replies
                                                               if not replies[r][1]}, stdout, stopped=others,
                                            waiting={r: where[r][0] for r in where}) from None
                    replies[rank] = reply
                    if not reply[1] and first_error is None:
                        first_error = time.monotonic()
        except BaseException:
            self._kill()  # a rank is stuck, dead or out of time, or we were interrupted: stop everyone
            raise
        seconds = time.monotonic() - start
        failed = {r: replies[r][2] for r in range(n) if not replies[r][1]}
        if failed:
            self._needs_reinit = True  # every rank answered: keep the processes, rebuild the group
            raise self._failure("raised", failed, {r: replies[r][7] for r in failed},
                                [replies[r][3] for r in range(n)], keep=True)
        return RunResult([pickle.loads(replies[r][2]) for r in range(n)], [replies[r][3] for r in range(n)],
                         [replies[r][4] for r in range(n)], [Traffic(replies[r][5]) for r in range(n)], seconds,
                         self.backend)

    def _failure(self, kind: str, failures: dict[int, str], exception_types: dict[int, str], stdout: list[str],
                 keep: bool = False, stopped: Iterable[int] = (), **details) -> RankFailed:
        return make_failure(kind, failures, exception_types, stdout, keep, stopped, **details)

    def _join_torchrun(self, backend: str) -> None:
        _torchrun.join_torchrun(self, backend)

    def _run_torchrun(self, fn: Callable, args: tuple, kwargs: dict) -> RunResult:
        return _torchrun.run_torchrun(self, fn, args, kwargs)


def _at(where: tuple[str, str] | None) -> str:
    """``'; it was waiting in ...:' + stack`` for a failure's text, from :meth:`Ranks._where`."""
    if not where:
        return ""
    summary, stack = where
    return f"; it was {summary}" + (f"\n{stack}" if stack else "")


_LIVE: "set[Ranks]" = set()
_POOLS: dict[tuple, Ranks] = {}


def pool(world_size: int | None = 4, *, backend: str = "auto", **options) -> Ranks:
    """The shared :class:`Ranks` of this size and backend, started on first use and then reused.

    Notebook cells and the checks that run exercises on ranks share it, so the ranks start once.
    Under torchrun, ``world_size`` may be None (torchrun decides).
    """
    key = (world_size if not _torchrun.under_torchrun() else None, backend)
    ranks = _POOLS.get(key)
    if ranks is None or ranks._closed:
        ranks = Ranks(world_size, backend=backend, **options)
        _POOLS[key] = ranks
    return ranks


def shutdown() -> None:
    """Stop every pool this process started (also runs when Python exits)."""
    for ranks in list(_LIVE):
        try:
            ranks.close()
        except Exception:  # noqa: BLE001
            pass
    _POOLS.clear()


atexit.register(shutdown)

