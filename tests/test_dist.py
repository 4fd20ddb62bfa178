"""Tests of course.dist: shipping notebook code to ranks, running it, failures, traffic counts.

Rank processes are expensive (each imports torch), so one 4-rank pool serves the tests that
leave the group healthy, and one 2-rank pool serves the tests that must stop it. Time limits in
assertions are generous multiples of the configured grace/timeout: the machine is shared.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from course import dist

REPO = Path(__file__).resolve().parent.parent

# Code as a notebook cell defines it: module __main__, globals in the cell's namespace.
NOTEBOOK_CELL = '''
import math
import torch
import torch.distributed as tdist
from torch import nn

SCALE = 3.0

def helper(x):
    return x * SCALE

def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)

def make_adder(k):
    def add(x):
        return x + k
    return add

class Doubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((2,), 2.0))

    def forward(self, x):
        return x * self.w

class TimesThreeGradNine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, g):
        return 9 * g

def uses_everything(x, bonus=1.0):
    y = torch.ones(2, requires_grad=True)
    TimesThreeGradNine.apply(y).sum().backward()
    return (helper(x) + factorial(4) + make_adder(10)(0) + bonus + math.floor(0.5),
            Doubler()(torch.ones(2)).sum().item(), y.grad.tolist())

def rank_sum(x):
    t = torch.tensor([float(x) * (tdist.get_rank() + 1)])
    tdist.all_reduce(t)
    print(f"hello from rank {tdist.get_rank()}")
    return t.item()
'''


def notebook_namespace(source: str = NOTEBOOK_CELL) -> dict:
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    return namespace


# --- shipping code by value (no ranks needed) -----------------------------------------------


def test_notebook_function_travels_by_value_with_its_globals_closures_and_classes():
    ns = notebook_namespace()
    expected = ns["uses_everything"](2.0, bonus=0.5)
    copy = dist.loads(dist.dumps(ns["uses_everything"]))
    assert copy is not ns["uses_everything"]
    assert copy(2.0, bonus=0.5) == expected == (6.0 + 24 + 10 + 0.5 + 0, 4.0, [9.0, 9.0])


def test_default_arguments_travel_with_the_function():
    ns = notebook_namespace("def f(x, k=5, *, j=7):\n    return x + k + j\n")
    assert dist.loads(dist.dumps(ns["f"]))(1) == 13


def test_importable_function_travels_by_name():
    data = dist.dumps(torch.nn.functional.relu)
    assert b"relu" in data and len(data) < 200
    assert dist.loads(data) is torch.nn.functional.relu


def test_unsendable_global_is_refused_with_its_name():
    ns = notebook_namespace("import threading\nLOCK = threading.Lock()\ndef f():\n    return LOCK.locked()\n")
    with pytest.raises(TypeError, match="'LOCK'"):
        dist.dumps(ns["f"])


def test_loads_validates_its_argument():
    with pytest.raises(TypeError, match="bytes"):
        dist.loads("not bytes")


# --- Traffic arithmetic ------------------------------------------------------------------------


def test_traffic_sums_filters_and_adds():
    t = dist.Traffic()
    t.add("all_reduce", "world", None, 100.0, 100.0)
    t.add("send", "world", 1, 40.0, 0.0)
    t.add("send", "intra0", 2, 10.0, 0.0)
    assert t.sent() == 150.0
    assert t.sent(op="send") == 50.0
    assert t.sent(op="send", group="world") == 40.0
    assert t.sent(peer={1, 2}) == 50.0
    assert t.sent(group=lambda g: g.startswith("intra")) == 10.0
    assert t.calls(op="send") == 2
    assert (t + t).sent() == 300.0 and sum([t, t]).sent() == 300.0
    assert [r["op"] for r in t.rows()] == ["all_reduce", "send", "send"]


# --- argument validation -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"world_size": 0}, "world_size"), ({"world_size": 2.0}, "world_size"),
    ({"world_size": 2, "backend": "mpi"}, "backend"), ({"world_size": 2, "timeout": -1}, "timeout"),
    ({"world_size": 2, "grace": 0}, "grace"), ({"world_size": 2, "threads_per_rank": 0}, "threads_per_rank"),
])
def test_ranks_validate_their_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dist.Ranks(**kwargs)


def test_torchrun_command_scales_out_and_validates():
    assert dist.torchrun_command("s.py", nnodes=2, nproc_per_node=8, endpoint="h:1") == \
        "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint h:1 s.py"
    assert "--standalone" in dist.torchrun_command("s.py", nnodes=1, nproc_per_node=4)
    with pytest.raises(ValueError, match="nnodes"):
        dist.torchrun_command("s.py", nnodes=0)


# --- running on ranks (one healthy 4-rank pool) -----------------------------------------------


@pytest.fixture(scope="module")
def ranks4():
    ranks = dist.Ranks(4, timeout=60, grace=2)
    yield ranks
    ranks.close()
    assert not ranks.alive


def test_run_returns_each_ranks_result_and_output(ranks4):
    ns = notebook_namespace()
    out = ranks4.run(ns["rank_sum"], 1.0)
    assert out.results == [10.0] * 4
    assert out.stdout == [f"hello from rank {r}\n" for r in range(4)]
    assert out.backend == "gloo" and out.world_size == 4


def test_notebook_classes_and_functions_work_on_ranks(ranks4):
    ns = notebook_namespace()
    out = ranks4.run(ns["uses_everything"], 2.0, bonus=0.5)
    assert out.results == [ns["uses_everything"](2.0, bonus=0.5)] * 4


def collectives_cell() -> dict:
    return notebook_namespace('''
import torch
import torch.distributed as tdist
from course import dist

def exercise_every_collective():
    rank = tdist.get_rank()
    pair = None
    for ranks in ([0, 1], [2, 3]):  # every rank must create every group, in the same order
        group = dist.new_group(ranks, label=f"pair{ranks[0]}")
        if rank in ranks:
            pair = group
    x = torch.ones(100)                                   # 400 bytes
    tdist.all_reduce(x)                                   # world, n=4
    tdist.all_reduce(torch.ones(100), group=pair)         # pair, n=2
    tdist.broadcast(torch.ones(100), src=0)
    out = torch.empty(25)
    tdist.reduce_scatter_tensor(out, torch.ones(100))
    tdist.all_gather_into_tensor(torch.empty(100), torch.ones(25))
    tdist.all_gather([torch.empty(10) for _ in range(4)], torch.ones(10))
    with dist.measure() as ring:
        peer = (rank + 1) % 4
        req = tdist.isend(torch.ones(50), peer)
        tdist.recv(torch.empty(50), (rank - 1) % 4)
        req.wait()
    return dist.traffic(), ring, x[0].item()
''')


def test_traffic_counts_bytes_per_operation_and_group(ranks4):
    out = ranks4.run(collectives_cell()["exercise_every_collective"])
    for rank, (total, ring, value) in enumerate(out.results):
        assert value == 4.0
        assert total.sent(op="all_reduce", group="world") == 2 * 3 / 4 * 400
        assert total.sent(op="all_reduce", group="pair0" if rank < 2 else "pair2") == 2 * 1 / 2 * 400
        # broadcast from rank 0 along the chain 0 -> 1 -> 2 -> 3: the last rank forwards nothing
        assert total.sent(op="broadcast") == (400 if rank < 3 else 0)
        assert total.received(op="broadcast") == (0 if rank == 0 else 400)
        assert total.sent(op="reduce_scatter") == 3 * 100  # (n-1) shards of 25 floats
        assert total.sent(op="all_gather") == 3 * 100 + 3 * 40
        assert ring.sent() == 200 and ring.sent(peer=(rank + 1) % 4) == 200
        assert ring.received(peer=(rank - 1) % 4) == 200
        assert total.calls(op="isend") == 1 and total.calls(op="recv") == 1
        assert out.traffic[rank].counts == total.counts  # the run's own count agrees


def test_every_rank_raising_keeps_the_processes_and_rebuilds_the_group(ranks4):
    ns = notebook_namespace("def bad():\n    raise ValueError('bad value')\n")
    pids, starts = ranks4.pids, ranks4.starts
    with pytest.raises(dist.RankFailed, match="ValueError: bad value") as info:
        ranks4.run(ns["bad"])
    assert info.value.kind == "raised" and sorted(info.value.failures) == [0, 1, 2, 3]
    assert ranks4.run(notebook_namespace()["rank_sum"], 2.0).results == [20.0] * 4
    assert ranks4.pids == pids and ranks4.starts == starts


def test_a_stub_on_ranks_reads_as_not_implemented(ranks4):
    ns = notebook_namespace("def stub():\n    raise NotImplementedError('Exercise 6.2: DDP')\n")
    with pytest.raises(NotImplementedError, match="Exercise 6.2") as info:
        ranks4.run(ns["stub"])
    assert info.value.first_error == "NotImplementedError: Exercise 6.2: DDP"


# --- failures that must stop the group (a separate 2-rank pool, restarted as needed) ----------

FAILING_CELL = '''
import os, signal, time
import torch
import torch.distributed as tdist

def one_rank_fails(how):
    if tdist.get_rank() == 1:
        if how == "raise":
            raise RuntimeError("rank one gives up")
        if how == "exit":
            os._exit(7)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    tdist.all_reduce(torch.ones(1))   # rank 0 waits here for rank 1 forever
    return "unreachable"

def sleeps(seconds):
    time.sleep(seconds)
'''


@pytest.fixture(scope="module")
def ranks2():
    ranks = dist.Ranks(2, timeout=60, grace=1)
    yield ranks
    ranks.close()


@pytest.mark.parametrize("how, expect", [("raise", "RuntimeError: rank one gives up"), ("exit", "exit code 7"),
                                         ("sigkill", "killed by signal 9")])
def test_a_failing_rank_ends_the_group_within_bounded_time(ranks2, how, expect):
    ns = notebook_namespace(FAILING_CELL)
    ranks2.run(ns["sleeps"], 0)  # make sure the ranks are up, so only the failure is timed
    old = ranks2.pids
    start = time.monotonic()
    with pytest.raises(dist.RankFailed, match=expect) as info:
        ranks2.run(ns["one_rank_fails"], how)
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"the group took {elapsed:.1f} s to end (grace is 1 s)"
    assert info.value.kind == ("raised" if how == "raise" else "died")
    assert 1 in info.value.failures
    assert all(not _alive(pid) for pid in old), "every rank process must be stopped"
    assert ranks2.run(ns["sleeps"], 0).results == [None, None]  # the next run starts fresh ranks


def test_a_run_past_its_time_limit_is_stopped(ranks2):
    ns = notebook_namespace(FAILING_CELL)
    ranks2.run(ns["sleeps"], 0)
    start = time.monotonic()
    with pytest.raises(dist.RankFailed, match="time limit") as info:
        ranks2.run(ns["sleeps"], 60, timeout=1.5)
    assert time.monotonic() - start < 10
    assert info.value.kind == "timeout"


MISMATCH_CELL = '''
import torch
import torch.distributed as tdist

def mismatched_all_reduce():
    tdist.all_reduce(torch.ones(4 if tdist.get_rank() == 0 else 8))   # 4 elements on rank 0, 8 on rank 1
'''


def test_a_mismatched_collective_names_where_the_ranks_wait_within_bounded_time(ranks2):
    ns = notebook_namespace(MISMATCH_CELL)
    ranks2.run(notebook_namespace(FAILING_CELL)["sleeps"], 0)
    start = time.monotonic()
    with pytest.raises(dist.RankFailed) as info:
        ranks2.run(ns["mismatched_all_reduce"], timeout=3)
    assert time.monotonic() - start < 15
    message = str(info.value)
    # gloo either aborts the rank that receives too much (naming the mismatch) or leaves ranks waiting;
    # either way the message says what happened, and where a rank still waits, in which call of which cell
    assert "collective mismatch" in message or "waiting in torch.distributed.all_reduce" in message, message
    if "waiting in" in message:
        assert "called at <notebook cell>, line 6 in mismatched_all_reduce" in message and "same sizes" in message


def test_debug_ranks_name_a_mismatched_collective_at_once():
    """``debug=True`` sets TORCH_DISTRIBUTED_DEBUG=DETAIL on the ranks (about 2x the time of a small
    all_reduce on gloo, so it is not the default): torch compares every collective across ranks."""
    ns = notebook_namespace(MISMATCH_CELL)
    with dist.Ranks(2, timeout=60, grace=1, debug=True) as ranks:
        ranks.run(notebook_namespace(FAILING_CELL)["sleeps"], 0)
        start = time.monotonic()
        with pytest.raises(dist.RankFailed, match="Detected mismatch between collectives") as info:
            ranks.run(ns["mismatched_all_reduce"], timeout=30)
        assert time.monotonic() - start < 10
        assert info.value.kind == "raised" and "4vs 8" in str(info.value).replace(" vs", "vs")


HANG_CELL_4 = '''
import torch
import torch.distributed as tdist

def rank_3_skips_the_all_reduce():
    if tdist.get_rank() != 3:
        tdist.all_reduce(torch.ones(4))   # ranks 0-2 wait here for rank 3, which never comes
    return tdist.get_rank()

def rank_3_sends_a_different_size():
    tdist.all_reduce(torch.ones(8 if tdist.get_rank() == 3 else 4))
'''


def test_a_4_rank_hang_ends_in_bounded_time_naming_the_call_each_rank_waits_in():
    ns = notebook_namespace(HANG_CELL_4)
    with dist.Ranks(4, timeout=60, grace=1) as ranks:
        ranks.run(notebook_namespace(FAILING_CELL)["sleeps"], 0)  # started and joined: time only the hang
        start = time.monotonic()
        with pytest.raises(dist.RankFailed) as info:
            ranks.run(ns["rank_3_skips_the_all_reduce"], timeout=3)
        # 3 s limit, then each stuck rank is asked for its stack (SIGUSR1) before it is stopped
        assert time.monotonic() - start < 20
        message = str(info.value)
        assert info.value.kind == "timeout"
        for rank in (0, 1, 2):
            assert f"rank {rank} was waiting in torch.distributed.all_reduce" in message, message
        assert "line 7 in rank_3_skips_the_all_reduce" in message
        assert "rank(s) [3] had finished" in message


def test_a_4_rank_size_mismatch_ends_in_bounded_time_naming_the_mismatch_or_the_waiting_call():
    ns = notebook_namespace(HANG_CELL_4)
    with dist.Ranks(4, timeout=60, grace=1) as ranks:
        ranks.run(notebook_namespace(FAILING_CELL)["sleeps"], 0)
        start = time.monotonic()
        with pytest.raises(dist.RankFailed) as info:
            ranks.run(ns["rank_3_sends_a_different_size"], timeout=3)
        assert time.monotonic() - start < 20
        message = str(info.value)
        # as with 2 ranks: gloo aborts a rank that receives too much, or the ranks are left waiting
        assert "collective mismatch" in message or "waiting in torch.distributed.all_reduce" in message, message
        if "waiting in" in message:
            assert "line 11 in rank_3_sends_a_different_size" in message


def test_an_interrupted_run_stops_the_ranks(ranks2):
    """The grader interrupts a check with SIGALRM; no rank may outlive that."""
    ns = notebook_namespace(FAILING_CELL)
    ranks2.run(ns["sleeps"], 0)
    old = ranks2.pids

    class Interrupted(BaseException):
        pass

    def on_alarm(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(Interrupted):
            ranks2.run(ns["sleeps"], 60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert all(not _alive(pid) for pid in old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a dead parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ranks_exit_when_the_notebook_kernel_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent('''
        import os, signal, sys
        from course import dist
        ranks = dist.Ranks(2)
        ranks.run(print, "up")
        print(*ranks.pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    '''))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in proc.stdout.split()[-2:]]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "rank processes outlived their parent"


@pytest.mark.slow
def test_the_same_code_runs_under_torchrun(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent('''
        import torch, torch.distributed as tdist
        from course import dist

        def rank_sum():
            t = torch.tensor([tdist.get_rank() + 1.0])
            tdist.all_reduce(t)
            print("on", tdist.get_rank())
            return t.item()

        def fails_everywhere():
            raise ValueError("no")

        out = dist.pool(None).run(rank_sum)
        try:
            dist.pool(None).run(fails_everywhere)
        except dist.RankFailed as error:
            caught = sorted(error.failures)
        if tdist.get_rank() == 0:
            print("RESULTS", out.results, [s.strip() for s in out.stdout], out.traffic[1].sent(), caught)
    '''))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # all_reduce of 4 bytes, n=2: 2*(1/2)*4 bytes sent; then every rank caught both ranks' failures
    assert "RESULTS [3.0, 3.0] ['on 0', 'on 1'] 4.0 [0, 1]" in proc.stdout


def test_threads_started_by_the_tests_are_gone():
    assert not [t for t in threading.enumerate() if t.name.startswith("course-dist")]


def test_the_torchrun_notebook_script_refuses_to_run_without_torchrun(tmp_path):
    notebook = REPO / "solutions" / "06_zero.ipynb"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run_notebook_torchrun.py"), str(notebook)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "torchrun" in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run_notebook_torchrun.py")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "Usage" not in proc.stderr and "torchrun" in proc.stdout
