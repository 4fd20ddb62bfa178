"""Tests of course.dist.device() and synchronize(): where a rank's tensors live.

On gloo (and without a process group) the answer is the CPU. NCCL cannot run here (no GPU), so
the NCCL case is simulated: the process group reports backend 'nccl' and CUDA reports GPUs, and
the test checks the device chosen and that it was made the current CUDA device.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from course import dist
from course.dist import devices


def rank_devices():
    """Run on every rank: the device it chose, and where a tensor made there went through all_reduce."""
    import torch
    import torch.distributed as tdist

    from course import dist

    where = dist.device()
    t = torch.ones(3, device=where) * (tdist.get_rank() + 1)
    tdist.all_reduce(t)
    dist.synchronize()
    return str(where), str(t.device), t.tolist()


def test_device_is_cpu_without_a_process_group():
    assert not tdist.is_initialized()
    assert dist.device() == torch.device("cpu")
    dist.synchronize()  # a no-op on the CPU: must not touch CUDA (there is none here)


def test_device_is_cpu_on_every_gloo_rank():
    out = dist.pool(2).run(rank_devices)
    assert out.backend == "gloo"
    assert [r[0] for r in out.results] == ["cpu", "cpu"]
    assert [r[1] for r in out.results] == ["cpu", "cpu"]
    assert out.results[0][2] == [3.0, 3.0, 3.0]  # 1 + 2 summed on both ranks


class FakeCuda:
    """Stands in for torch.cuda on a machine with ``count`` GPUs; records set_device/synchronize."""

    def __init__(self, monkeypatch, count: int):
        self.current, self.synced = None, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: self.synced.append(d))

    def set_device(self, index):
        self.current = index


def fake_group(monkeypatch, backend: str, rank: int):
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(tdist, "get_rank", lambda group=None: rank)


def test_nccl_under_torchrun_uses_cuda_local_rank_and_makes_it_current(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=8)
    fake_group(monkeypatch, "nccl", rank=13)  # global rank 13 = machine 1, local rank 5
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert dist.device() == torch.device("cuda", 5)
    assert cuda.current == 5
    dist.synchronize()
    assert cuda.synced == [torch.device("cuda", 5)]


def test_nccl_in_a_local_pool_uses_the_rank_s_gpu(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=4)
    fake_group(monkeypatch, "nccl", rank=2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # dist.pool's ranks do not set it
    assert dist.device() == torch.device("cuda", 2)
    assert cuda.current == 2


def test_mixed_backend_string_with_nccl_picks_the_gpu(monkeypatch):
    FakeCuda(monkeypatch, count=2)
    fake_group(monkeypatch, "cpu:gloo,cuda:nccl", rank=1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.device() == torch.device("cuda", 1)


def test_gloo_never_touches_cuda_even_when_gpus_exist(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=4)
    fake_group(monkeypatch, "gloo", rank=1)
    assert dist.device() == torch.device("cpu")
    dist.synchronize()
    assert cuda.current is None and cuda.synced == []


def test_nccl_with_more_local_ranks_than_gpus_names_the_constraint(monkeypatch):
    FakeCuda(monkeypatch, count=2)
    fake_group(monkeypatch, "nccl", rank=3)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(RuntimeError, match=r"local rank is 3 but this machine has 2 GPU"):
        dist.device()


def test_nccl_without_cuda_says_so(monkeypatch):
    fake_group(monkeypatch, "nccl", rank=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a GPU"):
        dist.device()


def test_device_and_synchronize_are_exported():
    assert {"device", "synchronize", "local_rank"} <= set(dist.__all__)
    assert dist.device is devices.device and dist.synchronize is devices.synchronize


# --- the notebooks' rank code, run with dist.device() = meta -------------------------------------
#
# Here every rank is the CPU, so a tensor made without ``device=dist.device()`` works by accident;
# on NCCL it fails at the first collective. To see such tensors without a GPU, the rank functions of
# notebooks 06 and 07 and of their checks run in this process, one rank after the other, with
# ``dist.device()`` returning the ``meta`` device (shapes, no data): what the code makes on
# ``dist.device()`` is a meta tensor, what it makes without a device is a CPU tensor. Two
# instruments then apply CUDA's rules to meta:
#
# * the collectives and point-to-point calls are replaced by stand-ins that fail unless every
#   tensor handed to them is on ``dist.device()`` (they move no data; the values do not matter);
# * a dispatch mode fails any operation that mixes meta tensors with CPU tensors of one element or
#   more, as CUDA kernels refuse CPU operands (0-dim CPU scalars are allowed on CUDA, so here too;
#   copies between devices are allowed, as on CUDA). ``.item()`` of a meta tensor returns 0.
#
# Point-to-point calls are also recorded, per rank, as NCCL groups (a batch_isend_irecv is one
# group; any other send or receive a group of its own), and replayed by dist.p2p.replay, a strict
# model of NCCL: a group finishes only when every receive of its sends and every send of its
# receives is posted. A replay that cannot finish is a pattern that may hang on NCCL however well it
# runs on gloo (the check of exercise 7.6 replays the learner's calls the same way).
#
# Not covered: torch's own implementations that the notebooks call (ZeroRedundancyOptimizer, FSDP2's
# fully_shard, DTensor tensor parallelism) need a real process group; their cells only choose where
# the model lives (check.tiny_mlp() and .to(dist.device())), and torch places their buffers.

REPO = Path(__file__).resolve().parent.parent
META = torch.device("meta")
COLLECTIVES = ("all_reduce", "reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "barrier")


def notebook_definitions(name: str) -> dict:
    """The imports, functions, classes and UPPER_CASE constants of a solution notebook, executed."""
    import nbformat

    namespace = {"__name__": "__main__", "SOURCES": {}}  # SOURCES: each function's and class's source
    for cell in nbformat.read(REPO / "solutions" / name, 4).cells:
        if cell.cell_type != "code":
            continue
        text = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                namespace["SOURCES"][node.name] = ast.get_source_segment(text, node)
        keep = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))
                or (isinstance(node, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in node.targets)
                    and all(n.id.isupper() for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)))]
        exec(compile(ast.Module(body=keep, type_ignores=[]), f"<{name}>", "exec"), namespace)
    return namespace


def _where() -> str:
    """The innermost frame of notebook or check code (not torch, not this test)."""
    import traceback

    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith("<") or "course/checks" in frame.filename:
            return f"{frame.filename}:{frame.lineno} {frame.line or ''}".strip()
    return "?"


class CudaRules(TorchDispatchMode):
    """Fails an operation that mixes meta (the rank's device) with non-scalar CPU tensors."""

    def __init__(self, violations: list):
        super().__init__()
        self.violations = violations

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_meta = any(t.device.type == "meta" for t in tensors)
        if func is torch.ops.aten._local_scalar_dense.default and on_meta:
            return 0.0  # .item(): a meta tensor has no value; the rank functions only print or sum it
        if func is torch.ops.aten._to_copy.default and on_meta and getattr(kwargs.get("device"), "type", "") == "cpu":
            # .cpu() is a legal copy on CUDA; a meta tensor has no data, so the copy is zeros
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is torch.ops.aten.copy_.default and args[0].device != args[1].device:
            return args[0]  # copy_ between devices is legal on CUDA (and meta has no data to copy)
        cpu = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if on_meta and cpu:
            message = (f"{func} mixes a tensor on dist.device() with a CPU tensor of shape {tuple(cpu[0].shape)} "
                       f"at {_where()}")
            self.violations.append(message)
            raise RuntimeError(message)
        return func(*args, **kwargs)


class FakeWork:
    def wait(self, *args, **kwargs):
        return True

    def is_completed(self):
        return True


class FakeP2POp:
    def __init__(self, op, tensor, peer=None, group=None, tag=0, group_peer=None):
        if op not in (tdist.isend, tdist.irecv):
            raise ValueError("P2POp's op must be tdist.isend or tdist.irecv")
        self.op, self.tensor, self.peer = op, tensor, peer


class MetaRanks:
    """Runs rank functions rank by rank in this process, with dist.device() = meta (see above)."""

    def __init__(self, monkeypatch, world: int = 4):
        self.world, self.rank = world, 0
        self.violations: list[str] = []
        self.groups: dict[int, list] = {}  # rank -> its point-to-point groups, in order
        mp = monkeypatch
        mp.setattr(dist, "device", lambda: META)
        mp.setattr(devices, "device", lambda: META)
        mp.setattr(tdist, "get_rank", lambda group=None: self.rank)
        mp.setattr(tdist, "get_world_size", lambda group=None: self.world)
        for name in COLLECTIVES:
            mp.setattr(tdist, name, self._collective(name))
        for name in ("isend", "irecv", "send", "recv"):
            fake = self._p2p(name)
            mp.setattr(tdist, name, fake)
        mp.setattr(tdist, "batch_isend_irecv", self._batch)
        mp.setattr(tdist, "P2POp", FakeP2POp)  # the real one looks up the (absent) default group

    def _check(self, what: str, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device != META:
                self.violations.append(f"rank {self.rank}: {what} got a tensor on {t.device}, not on "
                                       f"dist.device(), at {_where()}")

    def _collective(self, name):
        def fake(*args, **kwargs):
            self._check(name, tree_flatten((args, kwargs))[0])
            return FakeWork() if kwargs.get("async_op") else None
        return fake

    def _p2p(self, name):
        def fake(tensor, peer=None, group=None, tag=0, **kwargs):
            self._check(name, [tensor])
            kind = "send" if name in ("send", "isend") else "recv"
            self.groups.setdefault(self.rank, []).append([(kind, peer, tensor.numel())])
            return FakeWork() if name in ("isend", "irecv") else None
        return fake

    def _batch(self, ops):
        group = []
        for op in ops:
            self._check("batch_isend_irecv", [op.tensor])
            group.append(("send" if op.op is tdist.isend else "recv", op.peer, op.tensor.numel()))
        self.groups.setdefault(self.rank, []).append(group)
        return [FakeWork() for _ in ops]

    def run(self, fn, *args) -> list:
        results = []
        for rank in range(self.world):
            self.rank = rank
            with CudaRules(self.violations):
                try:
                    results.append(fn(*args))
                except RuntimeError as error:
                    if any(str(error) in v for v in self.violations):
                        continue  # CudaRules raised it, and recorded it
                    if "device" not in str(error):
                        raise
                    # torch's own device check (backward, .grad assignment): CUDA would raise it too
                    self.violations.append(f"rank {rank}: torch refused: {error} at {_where()}")
        return results


nccl_deadlock = dist.p2p.replay  # see course/dist/p2p.py


def _per_rank_grads():
    return [[torch.full((1, 2), r + 1.0) for r in range(4)], [torch.full((1,), r + 1.0) for r in range(4)]]


def zero_rank_code(ns: dict) -> dict:
    """Notebook 06's rank functions and its checks' harnesses, with the solution's exercises."""
    from course.checks import zero

    return {"hello": (ns["hello"], 10),
            "train_ddp": (ns["train_ddp"], ns["allreduce_gradients"]),
            "train_zero1": (ns["train_zero1"], ns["zero1_step"]),
            "train_zero2": (ns["train_zero2"], ns["shard_gradients"]),
            "train_zero3": (ns["train_zero3"], ns["ShardedLinear"]),
            "check: allreduce_gradients (known grads)": (zero._rank_grads_after, ns["allreduce_gradients"],
                                                          _per_rank_grads()),
            "check: allreduce_gradients (MLP)": (zero._rank_ddp_grads, ns["allreduce_gradients"]),
            "check: zero1_step": (zero._rank_zero1, ns["zero1_step"], 3),
            "check: shard_gradients": (zero._rank_shard_gradients, ns["shard_gradients"]),
            "check: sharded_linear": (zero._rank_sharded_linear, ns["ShardedLinear"])}


def megatron_rank_code(ns: dict) -> dict:
    """Notebook 07's rank functions and its checks' harnesses, with the solution's exercises."""
    from course.checks import megatron

    return {"check: conjugate_operators": (megatron._rank_f_g, ns["CopyToTensorParallel"],
                                           ns["ReduceFromTensorParallel"]),
            "check: parallel_mlp": (megatron._rank_parallel_mlp, ns["parallel_mlp"], 32, 128),
            "check: parallel_attention": (megatron._rank_parallel_attention, ns["parallel_attention"], 32, 4),
            "run_parallel_block": (ns["run_parallel_block"], 2, 8),
            "check: pipeline_1f1b": (megatron._rank_pipeline, ns["pipeline_1f1b"], 4),
            "train_step_on_pipeline": (ns["train_step_on_pipeline"], 8)}


@pytest.mark.parametrize("notebook, rank_code", [("06_zero.ipynb", zero_rank_code),
                                                 ("07_megatron.ipynb", megatron_rank_code)])
def test_every_tensor_the_rank_code_hands_a_collective_is_on_dist_device(monkeypatch, notebook, rank_code):
    ns = notebook_definitions(notebook)
    meta = MetaRanks(monkeypatch)
    for name, (fn, *args) in rank_code(ns).items():
        meta.run(fn, *args)
        assert not meta.violations, f"{notebook}, {name}:\n" + "\n".join(meta.violations[:5])


def _without_device(ns: dict, name: str):
    """The notebook function ``name`` re-defined with its tensors made on the default device (the bug)."""
    source = ns["SOURCES"][name]
    assert ", device=dist.device()" in source or "device=device" in source, f"{name} names no device"
    source = source.replace(", device=dist.device()", "").replace(", device=device)", ")")
    namespace = dict(ns)
    exec(compile(source, "<notebook cell, device removed>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("notebook, name, harness", [
    ("06_zero.ipynb", "zero1_step", lambda ns, fn: (ns["train_zero1"], fn)),
    ("06_zero.ipynb", "hello", lambda ns, fn: (fn, 10)),
    ("07_megatron.ipynb", "pipeline_1f1b", lambda ns, fn: (__import__("course.checks.megatron").checks.megatron
                                                           ._rank_pipeline, fn, 4)),
])
def test_a_tensor_made_without_dist_device_is_caught(monkeypatch, notebook, name, harness):
    ns = notebook_definitions(notebook)
    meta = MetaRanks(monkeypatch)
    fn, *args = harness(ns, _without_device(ns, name))
    meta.run(fn, *args)
    assert meta.violations, f"{name} without device=dist.device() was not caught"
    assert "not on dist.device()" in meta.violations[0] or "mixes a tensor on dist.device()" in meta.violations[0]


@pytest.mark.parametrize("m", [1, 4, 8])
def test_the_pipeline_s_point_to_point_calls_cannot_deadlock_on_nccl(monkeypatch, m):
    from course.checks import megatron

    ns = notebook_definitions("07_megatron.ipynb")
    meta = MetaRanks(monkeypatch)
    meta.run(megatron._rank_pipeline, ns["pipeline_1f1b"], m)
    assert not meta.violations
    assert sum(len(g) for groups in meta.groups.values() for g in groups) == 2 * 2 * m * 3  # 3 links, 2 ways
    assert nccl_deadlock(meta.groups, 4) is None


TAGGED_PIPELINE = '''
def pipeline_1f1b(stage, m, microbatches, targets, shape):
    # the earlier solution: isend per message, blocking recv, tags 0 (activations) and 1 (gradients)
    rank, world = tdist.get_rank(), tdist.get_world_size()
    first, last = rank == 0, rank == world - 1
    inputs, outputs, pending = {}, {}, []
    total = 0.0
    for kind, i in one_f_one_b(world, m, rank):
        if kind == "F":
            if first:
                x = microbatches[i]
            else:
                x = torch.empty(shape, device=dist.device())
                tdist.recv(x, rank - 1, tag=0)
                x.requires_grad_()
            y = stage(x)
            if last:
                y = F.mse_loss(y, targets[i]) / m
                total += y.item()
            else:
                activation = y.detach()
                pending.append((tdist.isend(activation, rank + 1, tag=0), activation))
            inputs[i], outputs[i] = x, y
        else:
            x, y = inputs.pop(i), outputs.pop(i)
            if last:
                y.backward()
            else:
                grad = torch.empty(shape, device=dist.device())
                tdist.recv(grad, rank + 1, tag=1)
                y.backward(grad)
            if not first:
                pending.append((tdist.isend(x.grad, rank - 1, tag=1), x.grad))
    for request, _ in pending:
        request.wait()
    return total if last else None
'''


def test_the_replay_catches_the_tagged_pipeline_that_runs_on_gloo_but_can_hang_on_nccl(monkeypatch):
    from course.checks import megatron

    ns = notebook_definitions("07_megatron.ipynb")
    exec(compile(TAGGED_PIPELINE, "<the tagged pipeline>", "exec"), ns)
    meta = MetaRanks(monkeypatch)
    meta.run(megatron._rank_pipeline, ns["pipeline_1f1b"], 8)
    assert not meta.violations  # its tensors are on the device: only its message order is at fault
    why = nccl_deadlock(meta.groups, 4)
    assert why is not None and why.startswith("every rank waits")


def test_the_replay_finishes_matched_orders_and_rejects_unmatched_ones():
    send, recv = ("send", 1, 4), ("recv", 0, 4)
    assert nccl_deadlock({0: [[send]], 1: [[recv]]}, 2) is None
    # two ranks that both send first, one message at a time: each send waits for the other's receive
    assert nccl_deadlock({0: [[("send", 1, 4)], [("recv", 1, 4)]], 1: [[("send", 0, 4)], [("recv", 0, 4)]]},
                         2).startswith("every rank waits")
    # the same exchange batched: one group each, so it finishes
    assert nccl_deadlock({0: [[("send", 1, 4), ("recv", 1, 4)]], 1: [[("send", 0, 4), ("recv", 0, 4)]]}, 2) is None
    assert "1 sends" in nccl_deadlock({0: [[send]], 1: []}, 2)
    assert "meets a receive of 8" in nccl_deadlock({0: [[send]], 1: [[("recv", 0, 8)]]}, 2)


def test_torchrun_picks_nccl_only_with_a_gpu_for_every_local_rank(monkeypatch):
    from course.dist.torchrun import torchrun_backend

    FakeCuda(monkeypatch, count=1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert torchrun_backend("auto") == "gloo"  # 4 ranks on one GPU: NCCL would need 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert torchrun_backend("auto") == "nccl"
    assert torchrun_backend("gloo") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torchrun_backend("auto") == "gloo"


def test_results_pickle_unchanged_on_the_cpu_and_keep_parameters():
    import pickle

    layer = torch.nn.Linear(2, 1)
    value = {"w": layer.weight, "t": torch.arange(3.0), "n": 1.5, "nested": [torch.ones(2, requires_grad=True)]}
    back = pickle.loads(devices.dumps_on_cpu(value))
    assert type(back["w"]) is torch.nn.Parameter and torch.equal(back["w"], layer.weight)
    assert torch.equal(back["t"], value["t"]) and back["n"] == 1.5
    assert back["nested"][0].requires_grad and back["nested"][0].device.type == "cpu"
