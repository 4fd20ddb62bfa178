"""On a GPU, would a CPU tensor reach a compiled Triton launch from notebooks 02-04's own cells?

Proven here on a CPU by running each notebook's code cells in a Jupyter kernel (as nbval does) with
a **simulated GPU**. On this machine the course's device *is* the CPU, so a plain run proves nothing:
every tensor is on the device. The simulation tells apart the tensors a GPU would hold from those
it would not, while every tensor still computes on the CPU (so outputs, training and checks run as
usual; a ``meta`` default device would compute nothing and prove nothing).

How it decides where a tensor would live
----------------------------------------
* ``course.runtime.device()`` returns a marker, ``torch.device("cpu", 0)``: a device torch computes
  on like the CPU, yet distinct from the default ``cpu`` (no index) that a factory without
  ``device=`` uses. It reaches every factory op (``aten.randn(..., device=cpu:0)``) and every copy
  (``x.to(DEVICE)`` is a real ``aten._to_copy`` to ``cpu:0``), so the marker is seen where a GPU
  would be chosen.
* Being on the simulated GPU is a property of a tensor's **storage** (as a CUDA allocation is): a
  ``TorchDispatchMode`` sees every ATen op, including those the autograd engine runs in a backward
  pass, and gives each new storage the place a GPU would give it: the marker when the op is told
  ``device=cpu:0``, the CPU when told ``device=cpu``, and otherwise the GPU when any input is on it
  (``empty_like``, ``x + y``, ``new_zeros``, gradients). Views and in-place results keep their
  storage's place, so ``param.data = param.to(DEVICE)`` (``nn.Module.to``) and ``load_state_dict``
  into a model already on the device behave as on a GPU. Storages are tracked through weak
  references, so a freed storage's address cannot be mistaken for a new one's.
* A ``TorchFunctionMode`` covers what ATen does not see: ``x.device`` answers the marker for a
  tensor on the simulated GPU (so ``torch.zeros(n, device=x.device)`` follows ``x`` there, as it
  would), ``torch.tensor(..., device=DEVICE)`` lands on it, ``x.to(DEVICE)`` of a tensor already there
  returns ``x``, and ``.cpu()`` / ``.to("cpu")`` of one returns a CPU copy, as on a GPU. Torch pops
  a function mode while the mode handles a call, and ``loss.backward()`` is one: every
  ``autograd.Function.backward`` is therefore run with the mode pushed again.
* Which branch a cell takes: a cell that asks ``runtime.triton_mode()`` gets ``"compiled"``, a GPU's
  answer (02's gradcheck cell then skips its float64, interpreter-only launches, as on a GPU); course
  code still gets ``"interpreter"``, since its kernels must run here. ``runtime.on_gpu()`` stays
  False: branches only a GPU takes (timing with CUDA events, 02's GPU benchmark) are not run.
* Every Triton launch (``InterpretedFunction.run``: ``kernel[grid](...)``, autotuned or not, the
  course's launchers and the learner's kernels alike) has each tensor argument checked: one whose
  storage a GPU would not hold is a finding, with the notebook cell, the line, the kernel and the
  argument. The launch itself then runs without the modes (the interpreter's own copies are not the
  notebook's).
* An ATen op that mixes a CPU tensor (not a 0-d scalar) with one on the simulated GPU would raise on
  a GPU ("Expected all tensors to be on the same device"); those are recorded too, except the ops
  CUDA accepts mixed (copies, indexing with CPU indices).

What it does not see: tensors made outside ATen (``torch.from_numpy``, storages ``torch.load``
builds) start on the CPU, which is where a GPU run would have them too; ``.cuda()`` and
``x.is_cuda`` are not simulated (no notebook cell or course module here uses them), nor is
``x.to(other_tensor)`` (its result stays where ``x`` was: reported if it reaches a launch, never hidden).
Hooks that run outside a handled call (tensor hooks, checkpoint recomputation) see real devices;
none of 02-04 uses them. A static lint
of the cells would miss tensors made inside ``course`` code, which this follows.

Cost: the two modes make torch ops slower (a TinyGPT training step took 2.3x its CPU time, measured
here), so each notebook runs once, marked slow. Kernel CPU time under the simulation, measured here:
02 24 s, 03 87 s (66 s of it the full fine-tune in lora-18), 04 68 s (60 s the three trainings in
bitnet-21). Its first run found 04's bitnet-35/35b (a model trained on the CPU, never moved) and 02's
fa-bench-correct (device results minus CPU float64 references); both are fixed, and ``KNOWN_*`` list
what a notebook still has, now nothing.

The test of the test plants a cell that builds ``torch.randn(4, 16)`` without ``device=`` and
hands it to ``lora.lora_linear``: the finding must name that cell, its line and the argument (in this process and through
the kernel driver), and the same cell with ``device=DEVICE`` must yield none.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

REPO = Path(__file__).resolve().parent.parent
MARKER = torch.device("cpu", 0)  # the simulated GPU: computes on the CPU, distinct from the default "cpu"
_DEVICE_GETTER = torch.Tensor.device.__get__
OWN_CODE = (str(REPO / "course") + os.sep, str(REPO / "tests") + os.sep)  # frames worth naming in a finding
_CELL_FILE = re.compile(r"ipykernel_\d+|<ipython-input")
# Ops CUDA runs with a CPU tensor beside a CUDA one (copies between devices, CPU index tensors).
_MIXED_OK = {"aten::copy_", "aten::_to_copy", "aten::index", "aten::index_put_", "aten::_index_put_impl_",
             "aten::set_", "aten::lift_fresh", "aten::detach", "aten::alias"}  # op names without overload


def _tensors(*values) -> list[torch.Tensor]:
    """The tensors among ATen arguments or results (tensors, lists or tuples of them, dict values):
    a hand-written flatten, as torch's pytree cost more than the op itself."""
    found = []
    for v in values:
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(_tensors(*v))
        elif isinstance(v, dict):
            found.extend(_tensors(*v.values()))
    return found


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors: never a launch operand
        return None


class SimulatedGpu:
    """Which storages a GPU would hold, and what reached a Triton launch from the CPU."""

    def __init__(self) -> None:
        self._on_gpu: dict[int, StorageWeakRef] = {}
        self.cell = "<before any cell>"  # set by the driver before each notebook cell
        self.launches: dict[str, int] = {}
        self.cpu_operands: list[dict] = []
        self.mixed_ops: list[dict] = []
        self._seen: set[tuple] = set()
        self.cpu_seconds: dict[str, float] = {}  # kernel CPU time per cell, under the simulation
        self._started = time.process_time()
        self.modes: list = []  # the function and dispatch modes install() pushes

    def enter(self, cell: str) -> None:
        """The driver says which notebook cell runs next."""
        now = time.process_time()
        self.cpu_seconds[self.cell] = round(now - self._started, 2)
        self.cell, self._started = cell, now

    # -- where a storage lives ---------------------------------------------------------------------

    def on_gpu(self, t: torch.Tensor) -> bool:
        s = _storage(t)
        ref = None if s is None else self._on_gpu.get(s._cdata)
        return ref is not None and not ref.expired()

    def place(self, t: torch.Tensor, gpu: bool) -> None:
        s = _storage(t)
        if s is None:
            return
        if gpu:
            self._on_gpu[s._cdata] = StorageWeakRef(s)
            if len(self._on_gpu) % 4096 == 0:  # forget freed storages (their weak references pin the address)
                self._on_gpu = {k: r for k, r in self._on_gpu.items() if not r.expired()}
        else:
            self._on_gpu.pop(s._cdata, None)

    # -- findings ------------------------------------------------------------------------------------

    def check_launch(self, kernel: str, names: list[str], args: tuple, kwargs: dict) -> None:
        self.launches[kernel] = self.launches.get(kernel, 0) + 1
        named = list(zip(names, args)) + list(kwargs.items())
        for name, value in named:
            if isinstance(value, torch.Tensor) and not self.on_gpu(value):
                self._record(self.cpu_operands, (kernel, name), kernel=kernel, argument=name,
                             shape=list(value.shape), dtype=str(value.dtype).replace("torch.", ""))

    def check_mixed(self, op, inputs: list[torch.Tensor], gpu: list[bool]) -> None:
        if not any(gpu) or op._schema.name in _MIXED_OK:
            return
        cpu = [t for t, g in zip(inputs, gpu) if not g and t.dim() > 0]
        if cpu:
            self._record(self.mixed_ops, (op.name(),), op=op.name(), cpu_shapes=[list(t.shape) for t in cpu])

    def _record(self, into: list, key: tuple, **finding) -> None:
        frames = _where()
        key = (self.cell, *key, *(f["line"] for f in frames[-1:]))
        if key in self._seen:
            return
        self._seen.add(key)
        into.append({"cell": self.cell, **finding, "frames": frames})

    def report(self) -> dict:
        self.enter("<report>")
        return {"launches": self.launches, "cpu_operands": self.cpu_operands, "mixed_ops": self.mixed_ops,
                "cpu_seconds": self.cpu_seconds}


def _where() -> list[dict]:
    """The notebook-cell and repository frames of the current stack, outermost first; a cell frame
    carries its source so that the driver can say which cell it is."""
    import linecache

    frames = []
    for f in traceback.extract_stack()[:-3]:
        if _CELL_FILE.search(f.filename):
            frames.append({"file": "<cell>", "line": f.lineno, "code": (f.line or "").strip(),
                           "source": "".join(linecache.getlines(f.filename))})
        elif f.filename.startswith(OWN_CODE) and not f.filename.endswith("test_notebook_devices.py"):
            frames.append({"file": os.path.relpath(f.filename, REPO), "line": f.lineno, "code": (f.line or "").strip()})
    return frames


class _Placement(TorchDispatchMode):
    """Gives every new storage the place a GPU would give it (see the module docstring)."""

    def __init__(self, gpu: SimulatedGpu) -> None:
        super().__init__()
        self.gpu = gpu

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _tensors(args, kwargs)
        gpu = [self.gpu.on_gpu(t) for t in inputs]
        self.gpu.check_mixed(func, inputs, gpu)
        device = kwargs.get("device")
        target = (torch.device(device) == MARKER) if device is not None else any(gpu)
        if target:
            aliased = {s._cdata for s in map(_storage, inputs) if s is not None}
            for t in _tensors(out):
                s = _storage(t)
                if s is not None and s._cdata not in aliased:
                    self.gpu.place(t, True)
        return out


def _wants_marker(device) -> bool:
    try:
        return device is not None and torch.device(device) == MARKER
    except (TypeError, RuntimeError):
        return False


class _Devices(TorchFunctionMode):
    """What ATen does not see: ``x.device``, ``torch.tensor(device=...)``, ``to``/``cpu`` no-ops."""

    def __init__(self, gpu: SimulatedGpu) -> None:
        super().__init__()
        self.gpu = gpu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GETTER:
            return MARKER if self.gpu.on_gpu(args[0]) else func(*args)
        if func is torch.Tensor.to and self._already_there(args, kwargs):
            return args[0]
        out = func(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cpu) and out is args[0] and self._to_the_cpu(func, args, kwargs) \
                and self.gpu.on_gpu(out):
            out = out.clone()  # a GPU tensor moved to the CPU is a new CPU tensor
            self.gpu.place(out, False)
        elif _wants_marker(kwargs.get("device")):  # torch.tensor(..., device=DEVICE) and friends
            for t in _tensors(out):
                if not self.gpu.on_gpu(t):
                    self.gpu.place(t, True)
        return out

    @staticmethod
    def _to_the_cpu(func, args, kwargs) -> bool:
        """``x.cpu()``, or ``x.to(...)`` naming a CPU device (not ``x.to(dtype)``, which stays put)."""
        if func is torch.Tensor.cpu:
            return True
        target = _to_target(args, kwargs) if func is torch.Tensor.to else None
        return target is not None and target[0] is not None and target[0].type == "cpu" and not _wants_marker(target[0])

    def _already_there(self, args, kwargs) -> bool:
        """``x.to(DEVICE)`` (dtype unchanged) of a tensor already on the simulated GPU returns ``x``."""
        target = None if kwargs.get("copy") or not self.gpu.on_gpu(args[0]) else _to_target(args, kwargs)
        if target is None:
            return False
        device, dtype, memory_format = target
        return _wants_marker(device) and dtype in (None, args[0].dtype) and memory_format is None


def _to_target(args, kwargs):
    """(device, dtype, memory_format) that ``x.to(*args[1:], **kwargs)`` asks for, or None when it
    names another tensor (``x.to(y)``) or cannot be parsed."""
    if any(isinstance(a, torch.Tensor) for a in args[1:]):
        return None
    try:
        device, dtype, _, memory_format = torch._C._nn._parse_to(*args[1:], **{k: v for k, v in kwargs.items()
                                                                              if k != "copy"})
    except (TypeError, RuntimeError):
        return None
    return device, dtype, memory_format


def _backward_sees_devices(mode: _Devices) -> None:
    """Run every ``autograd.Function.backward`` with ``mode`` on.

    Torch pops a function mode while the mode handles a call, and ``loss.backward()`` is such a call:
    without this, a backward's ``torch.empty(..., device=q.device)`` would see the real device (the
    CPU) and be reported though a GPU would put it next to ``q``.
    """
    from torch.autograd.function import BackwardCFunction

    apply = getattr(BackwardCFunction.apply, "__wrapped__", BackwardCFunction.apply)

    def apply_with_mode(self, *args):
        if mode in torch.overrides._get_current_function_mode_stack():
            return apply(self, *args)
        with mode:
            return apply(self, *args)

    apply_with_mode.__wrapped__ = apply
    BackwardCFunction.apply = apply_with_mode


@contextmanager
def _modes_off():
    with _disable_current_modes(), torch._C.DisableTorchFunction():
        yield


def install() -> SimulatedGpu:
    """Simulate a GPU in this process from now on (the kernel's prelude); returns the recorder."""
    import course  # noqa: F401  (first: the Triton interpreter, before any kernel is defined)
    from course import runtime
    from triton.runtime.interpreter import InterpretedFunction

    gpu = SimulatedGpu()
    runtime.device = lambda: MARKER
    course.device = runtime.device
    interpreter_mode = runtime.triton_mode

    def triton_mode() -> str:
        """A notebook cell that asks gets a GPU's answer (it skips interpreter-only paths as a GPU
        would); course code gets the interpreter's, since its kernels must still run here."""
        return "compiled" if _CELL_FILE.search(sys._getframe(1).f_code.co_filename) else interpreter_mode()

    runtime.triton_mode = triton_mode
    run = InterpretedFunction.run

    def checked_run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            gpu.check_launch(self.__name__, self.arg_names, args, kwargs)
        with _modes_off():
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = checked_run
    gpu.modes = [_Devices(gpu), _Placement(gpu)]
    _backward_sees_devices(gpu.modes[0])
    for mode in gpu.modes:
        mode.__enter__()
    return gpu


@contextmanager
def simulated_gpu():
    """The same simulation in this process, undone afterwards (for the unit tests below)."""
    from course import runtime
    from triton.runtime.interpreter import InterpretedFunction

    from torch.autograd.function import BackwardCFunction

    saved = runtime.device, runtime.triton_mode, InterpretedFunction.run, BackwardCFunction.apply
    gpu = install()
    try:
        yield gpu
    finally:
        for mode in reversed(gpu.modes):
            mode.__exit__(None, None, None)
        runtime.device, runtime.triton_mode, InterpretedFunction.run, BackwardCFunction.apply = saved
        import course

        course.device = runtime.device


# --- the driver: a notebook's code cells in a kernel, under the simulated GPU ---------------------

CELL_TIMEOUT = 300  # seconds, as the Makefile gives nbval (--nbval-cell-timeout 300)
PRELUDE = (f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n"
           "import test_notebook_devices as _course_gpu_sim_module\n"
           "_course_gpu_sim = _course_gpu_sim_module.install()")


def run_simulated(cells: list[tuple[str, str]], cwd: Path, report_to: Path) -> dict:
    """Run ``cells`` (cell id, source) in order in a fresh kernel with a simulated GPU; return what
    reached a launch from the CPU, each frame of a notebook cell named by its cell id."""
    from course.grading.kernel import KernelSession, kernel_env

    with KernelSession(str(cwd), env=kernel_env()) as session:
        outcome = session.run(PRELUDE, 120)
        assert outcome.status == "ok", f"the simulation did not install: {outcome.error}"
        for cell_id, source in cells:
            session.run(f"_course_gpu_sim.enter({cell_id!r})", 30)
            outcome = session.run(source, CELL_TIMEOUT)
            if outcome.status != "ok":  # a cell that fails here would fail on a GPU, or the simulation is wrong
                pytest.fail(f"cell {cell_id} under the simulated GPU: {outcome.status}: {outcome.error}")
        outcome = session.run(f"open({str(report_to)!r}, 'w').write(__import__('json').dumps(_course_gpu_sim.report()))",
                              60)
        assert outcome.status == "ok", outcome.error
    report = json.loads(report_to.read_text())
    by_source = {source.strip(): cell_id for cell_id, source in cells}
    for finding in report["cpu_operands"] + report["mixed_ops"]:
        for frame in finding["frames"]:
            if frame["file"] == "<cell>":
                frame["file"] = f"cell {by_source.get(frame.pop('source').strip(), '?')}"
    return report


def notebook_cells(path: Path) -> list[tuple[str, str]]:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [(c.id, c.source) for c in nb.cells if c.cell_type == "code"]


def describe(findings: list[dict]) -> str:
    """One line a finding: the cell running, what was handed over, and the frames down to it."""
    lines = []
    for f in findings:
        what = f"{f['kernel']}({f['argument']}: {f['dtype']} {f['shape']})" if "kernel" in f else \
            f"{f['op']} with CPU {f['cpu_shapes']}"
        path = " -> ".join(f"{fr['file']}:{fr['line']} `{fr['code']}`" for fr in f["frames"])
        lines.append(f"while cell {f['cell']} ran: {what}, via {path}")
    return "\n".join(lines)


# --- the tests of the simulation itself (in this process: fast) ------------------------------------

def _in_a_cell(code: str, namespace: dict, name: str = "<ipython-input-1-planted>") -> None:
    """Run ``code`` as a notebook cell would (its frames carry a cell's file name)."""
    import linecache

    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    exec(compile(code, name, "exec"), namespace)


def test_a_tensor_is_on_the_simulated_gpu_only_where_a_gpu_would_put_it():
    with simulated_gpu() as gpu:
        device = runtime_device()
        assert device == MARKER and device != torch.device("cpu")
        assert not gpu.on_gpu(torch.randn(4, 16)), "no device=: torch's default, the CPU"
        x = torch.randn(4, 16, device=device)
        assert gpu.on_gpu(x) and x.device == MARKER
        assert gpu.on_gpu(torch.zeros(3, device=x.device)), "device=x.device follows x"
        assert gpu.on_gpu(torch.tensor([1.0, 2.0], device=device))
        assert gpu.on_gpu(x[1:]) and gpu.on_gpu(x.half()) and gpu.on_gpu(torch.empty_like(x)) and gpu.on_gpu(x * 2)
        assert x.to(device) is x, "to() of a tensor already there returns it, as on a GPU"
        back = x.cpu()
        assert not gpu.on_gpu(back) and gpu.on_gpu(x), ".cpu() is a new CPU tensor; x stays"
        assert not gpu.on_gpu(x.to("cpu")) and not gpu.on_gpu(torch.from_numpy(back.numpy()))
        assert x.to(torch.float32) is x and gpu.on_gpu(x.to(torch.float32)), "to(its own dtype) stays put"


def test_modules_and_gradients_follow_the_device_they_are_moved_to():
    with simulated_gpu() as gpu:
        device = runtime_device()
        cpu_model, model = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8).to(device)
        assert not gpu.on_gpu(cpu_model.weight)
        assert gpu.on_gpu(model.weight) and gpu.on_gpu(model.bias), "Module.to sets param.data to a device copy"
        model.load_state_dict(cpu_model.state_dict())  # copies into the device parameters, as on a GPU
        assert gpu.on_gpu(model.weight)
        model(torch.randn(2, 16, device=device)).sum().backward()
        assert gpu.on_gpu(model.weight.grad), "the autograd engine's ops are followed too"


def test_an_autograd_function_backward_sees_the_simulated_devices():
    placed = {}

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            placed["buffer"] = gpu.on_gpu(torch.empty(3, device=x.device))
            return grad * 2

    with simulated_gpu() as gpu:
        x = torch.randn(3, device=runtime_device(), requires_grad=True)
        Double.apply(x).sum().backward()
        assert placed == {"buffer": True}
        placed.clear()
        torch.autograd.grad(Double.apply(x).sum(), x)  # gradcheck's way in
        assert placed == {"buffer": True}


def test_a_cpu_tensor_handed_to_a_launch_is_reported_with_its_cell_line_and_argument():
    """The planted regression: a cell builds its operands without device= and calls lora.lora_linear."""
    from course import lora

    planted = ("import torch\n"
               "x, w, a, b = torch.randn(4, 16), torch.randn(8, 16), torch.randn(2, 16), torch.randn(8, 2)\n"
               "y = lora.lora_linear(x, w, a, b, 1.0)\n")
    on_device = planted.replace("torch.randn(4, 16), torch.randn(8, 16), torch.randn(2, 16), torch.randn(8, 2)",
                                "(torch.randn(*s, device=DEVICE) for s in ((4, 16), (8, 16), (2, 16), (8, 2)))")
    with simulated_gpu() as gpu:
        _in_a_cell(on_device, {"lora": lora, "DEVICE": runtime_device()})
        assert gpu.launches and gpu.cpu_operands == [], "operands made on runtime.device() are not reported"
        gpu.enter("planted")
        _in_a_cell(planted, {"lora": lora})
    found = {f["argument"] for f in gpu.cpu_operands}
    assert {"x_ptr", "w_ptr", "a_ptr", "b_ptr"} <= found, found
    first = gpu.cpu_operands[0]
    assert first["cell"] == "planted" and first["kernel"] == "_lora_fused_kernel"
    cell_frames = [f for f in first["frames"] if f["file"] == "<cell>"]
    assert cell_frames and cell_frames[0]["line"] == 3 and "lora_linear" in cell_frames[0]["code"]
    assert any(f["file"] == "course/lora.py" for f in first["frames"]), "the path through course code is named"


def test_an_op_mixing_a_cpu_tensor_with_a_gpu_one_is_reported():
    with simulated_gpu() as gpu:
        x = torch.randn(4, device=runtime_device())
        _ = x * torch.tensor(2.0)  # a 0-d CPU scalar: CUDA accepts it
        assert gpu.mixed_ops == []
        _ = x - torch.randn(4)  # CUDA: "Expected all tensors to be on the same device"
    assert [f["op"] for f in gpu.mixed_ops] == ["aten::sub.Tensor"]


def test_a_cell_asking_the_triton_mode_gets_a_gpus_answer_and_course_code_the_interpreters():
    from course import runtime

    with simulated_gpu():
        seen = {}
        _in_a_cell("seen['cell'] = runtime.triton_mode()", {"seen": seen, "runtime": runtime})
        assert seen == {"cell": "compiled"} and runtime.triton_mode() == "interpreter"
    assert runtime.triton_mode() == "interpreter" and runtime.device() == torch.device("cpu")


def runtime_device() -> torch.device:
    from course import runtime

    return runtime.device()


# --- the notebooks, each run once in a kernel under the simulated GPU -----------------------------

NOTEBOOKS = ["02_flash_attention", "03_lora", "04_bitnet"]

# What a GPU run would hit today, in cells this test cannot change (notebooks are edited by their
# owners). Listed so that the test says exactly what remains: it fails when one is fixed (delete its
# entry) as well as when a new one appears.

#: CPU tensors handed to a Triton launch. Keys: (notebook, cell id running, kernel).
KNOWN_CPU_OPERANDS: dict = {}

#: ATen ops mixing a CPU tensor with a device one ("Expected all tensors to be on the same device").
#: Keys: (notebook, cell id running, ATen op).
KNOWN_MIXED_OPS: dict = {}


def _unexpected(found: set, known: dict, name: str) -> str:
    known = {key for key in known if key[0] == name}
    if found == known:
        return ""
    return f"new: {sorted(found - known)}; fixed (delete from the KNOWN list): {sorted(known - found)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_cpu_tensor_reaches_a_triton_launch_from_the_notebooks_own_cells(name, tmp_path):
    path = REPO / "solutions" / f"{name}.ipynb"
    report = run_simulated(notebook_cells(path), path.parent, tmp_path / "report.json")
    assert sum(report["launches"].values()) > 0, "no Triton launch ran: the simulation proved nothing"
    operands = {(name, f["cell"], f["kernel"]) for f in report["cpu_operands"]}
    problem = _unexpected(operands, KNOWN_CPU_OPERANDS, name)
    assert not problem, f"CPU tensors a GPU run would hand to a compiled kernel: {problem}\n" + \
        describe(report["cpu_operands"])
    mixed = {(name, f["cell"], f["op"]) for f in report["mixed_ops"]}
    problem = _unexpected(mixed, KNOWN_MIXED_OPS, name)
    assert not problem, f"ops that would mix devices on a GPU: {problem}\n" + describe(report["mixed_ops"])


@pytest.mark.slow
def test_the_kernel_driver_names_the_cell_that_hands_a_cpu_tensor_to_a_launch(tmp_path):
    """The planted regression, run as the notebooks are: in a kernel, cell by cell."""
    cells = [("setup", "import torch\nimport course\nfrom course import lora, runtime\nDEVICE = runtime.device()"),
             ("on-device", "ops = [torch.randn(*s, device=DEVICE) for s in ((4, 16), (8, 16), (2, 16), (8, 2))]\n"
                           "y = lora.lora_linear(*ops, 1.0)"),
             ("planted", "x = torch.randn(4, 16)\nw, a, b = torch.randn(8, 16), torch.randn(2, 16), torch.randn(8, 2)\n"
                         "y = lora.lora_linear(x, w, a, b, 1.0)")]
    report = run_simulated(cells, tmp_path, tmp_path / "report.json")
    assert report["launches"] == {"_lora_fused_kernel": 2}
    assert {f["cell"] for f in report["cpu_operands"]} == {"planted"}
    assert {"x_ptr", "w_ptr", "a_ptr", "b_ptr"} <= {f["argument"] for f in report["cpu_operands"]}
    assert "cell planted:3 `y = lora.lora_linear(x, w, a, b, 1.0)`" in describe(report["cpu_operands"][:1])
