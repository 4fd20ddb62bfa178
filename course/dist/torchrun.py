"""Under torchrun: join the group torchrun made and run ``fn`` in this process, so that a script
written against :mod:`course.dist` scales to more machines unchanged.

The functions here take the :class:`~course.dist.Ranks` they serve as ``self``.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import pickle
import sys
import time
import traceback
from typing import Callable

import torch
import torch.distributed as tdist

from .devices import dumps_on_cpu
from .results import RunResult, make_failure
from .traffic import Traffic, instrument, reset_traffic, traffic


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or anything that sets the env:// variables)."""
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def torchrun_world_size() -> int | None:
    """The number of ranks torchrun started, or None when not under torchrun.

    Notebooks write ``WORLD = dist.torchrun_world_size() or 4``: four local ranks, or however many
    torchrun started when the same code runs as a script on a cluster.
    """
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else None


def torchrun_backend(backend: str = "auto") -> str:
    """The backend for torchrun's group: ``backend`` if given; for ``'auto'``, NCCL when this machine
    has a GPU for each of its ranks (``LOCAL_WORLD_SIZE``), else gloo (for example 4 ranks on one GPU)."""
    if backend != "auto":
        return backend
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    enough = torch.cuda.is_available() and torch.cuda.device_count() >= local_ranks
    return "nccl" if enough else "gloo"


def join_torchrun(self, backend: str) -> None:
    """Join the process group torchrun made (making it if the script has not yet)."""
    if not tdist.is_initialized():
        chosen = torchrun_backend(backend)
        if chosen == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # a collective that waits longer than this raises instead of hanging until torchrun is killed
        tdist.init_process_group(chosen, init_method="env://",
                                 timeout=datetime.timedelta(seconds=max(self.timeout, 60.0)))
    self.backend = tdist.get_backend()
    instrument()
    self._ready = True


def run_torchrun(self, fn: Callable, args: tuple, kwargs: dict) -> RunResult:
    """Call ``fn`` in this process; then agree with the other ranks, through the store, on
    whether everyone succeeded, so that every rank raises the same :class:`RankFailed`.

    A rank that raised waits ``grace`` seconds for the others' verdicts; if some never come
    (they are stuck in a collective waiting for it), it prints its traceback and exits, and
    torchrun stops the rest: bounded, like the local case.
    """
    reset_traffic()
    self._torchrun_runs += 1
    rank, n = tdist.get_rank(), self.world_size
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    result, failure, kind = None, "", ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - reported to every rank below
        failure = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        kind = type(error).__name__
    store = tdist.distributed_c10d._get_default_store()
    prefix = f"course-dist/run{self._torchrun_runs}/"
    store.set(prefix + str(rank), pickle.dumps((failure, kind, out.getvalue())))
    keys = [prefix + str(r) for r in range(n)]
    waited = self.grace if failure else self.timeout
    try:
        store.wait(keys, datetime.timedelta(seconds=waited))
    except Exception:  # noqa: BLE001 - some rank never finished
        try:
            missing = [r for r in range(n) if not store.check([keys[r]])]
        except Exception:  # noqa: BLE001 - the store went away with the rank that hosted it
            missing = "some"
        if failure:
            what = (f"rank {rank} raised, and rank(s) {missing} had not finished {waited:g} s later (most likely "
                    f"waiting in a collective for rank {rank}); exiting so that torchrun stops them. "
                    f"Rank {rank}'s traceback:\n{failure}")
        else:
            what = (f"rank {rank} finished, but rank(s) {missing} did not finish within the {waited:g} s time "
                    "limit; exiting so that torchrun stops them\n")
        sys.__stderr__.write(what)
        sys.__stderr__.flush()
        os._exit(1)
    verdicts = [pickle.loads(store.get(k)) for k in keys]
    failures = {r: v[0] for r, v in enumerate(verdicts) if v[0]}
    if failures:
        raise make_failure("raised", failures, {r: verdicts[r][1] for r in failures},
                            [v[2] for v in verdicts], keep=True, torchrun=True)
    # GPU tensors in the result become CPU copies, as in a local pool (see course.dist.devices)
    mine = pickle.loads(dumps_on_cpu((result, out.getvalue(), err.getvalue(), traffic().counts)))
    gathered: list = [None] * n
    tdist.all_gather_object(gathered, mine)
    return RunResult([g[0] for g in gathered], [g[1] for g in gathered], [g[2] for g in gathered],
                     [Traffic(g[3]) for g in gathered], time.monotonic() - start, self.backend)


def torchrun_command(script: str, *, nnodes: int = 2, nproc_per_node: int = 8, endpoint: str = "HEAD_NODE:29500",
                     args: str = "") -> str:
    """The command that runs ``script`` on ``nnodes`` machines with ``nproc_per_node`` ranks each."""
    for name, value in (("nnodes", nnodes), ("nproc_per_node", nproc_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(script, str) or not script:
        raise ValueError(f"script must be a path, got {script!r}")
    rendezvous = "--standalone" if nnodes == 1 else f"--rdzv-backend c10d --rdzv-endpoint {endpoint}"
    return f"torchrun --nnodes {nnodes} --nproc-per-node {nproc_per_node} {rendezvous} {script}" + (
        f" {args}" if args else "")

