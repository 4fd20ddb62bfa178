"""What will a GPU do with this kernel? Compile a Triton kernel for an NVIDIA target without a GPU.

``compile_report(kernel, signature, constexprs, arch)`` runs Triton's real compiler (the one a GPU
would run) for ``sm_<arch>`` and reads the result back: registers per thread and spills (the
"bytes spill stores/loads" of ``ptxas -v``, Triton's bundled ptxas), shared memory per block, and whether the
code uses tensor-core instructions (``mma``/``wgmma``). It works where kernels run in the CPU
interpreter (``TRITON_INTERPRET=1``): the kernel and the ``@triton.jit`` helpers it calls are rebuilt
as compilable functions for the duration of the call. CI uses it (``tests/test_gpu_compile.py``) to fail
on compile errors, spills and shared memory over the limit; notebooks can show it to learners.

On sm_75 (Turing, a free Colab T4) this Triton has no tensor-core path: its matmul pass refuses MMA
below sm_80 ("Dot op using MMA for compute capability 75 has been deprecated. It falls back to the
FMA path."), so ``tl.dot`` on fp16, int8 or fp32 compiles to ``fma`` instructions (``has_mma`` is
False; measured with Triton 3.9.0: fp16 32x32x32 gives ``fma.rn.f32`` and no ``mma.sync``, the same
tile for sm_80 gives ``mma.sync.aligned.m16n8k16``). The T4's hardware has fp16 tensor cores; Triton
does not use them.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import types
from dataclasses import dataclass
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

#: Shared memory a block may use (opt-in maximum), bytes: sm_75 64 KiB, sm_80 163 KiB, sm_90 227 KiB.
SHARED_LIMIT = {75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
ARCHS = (75, 80, 90)


@dataclass(frozen=True)
class Report:
    arch: int
    registers: int
    spills: int  # bytes of spill stores + loads reported by ptxas -v
    shared_bytes: int
    has_mma: bool
    ptx: str
    stack_bytes: int = 0  # ptxas's stack frame per thread (where spilled registers live)

    @property
    def shared_limit(self) -> int:
        return SHARED_LIMIT[self.arch]

    @property
    def tensor_core_instruction(self) -> str:
        """``'wgmma'`` (Hopper warpgroup MMA), ``'mma'`` (Ampere-style warp MMA) or ``''`` (none) in the PTX."""
        if re.search(r"\bwgmma\.", self.ptx):
            return "wgmma"
        return "mma" if re.search(r"\bmma\.", self.ptx) else ""

    def summary(self) -> str:
        return (f"sm_{self.arch}: {self.registers} registers/thread, {self.spills} bytes spilled, "
                f"{self.shared_bytes / 1024:.1f} KiB shared (limit {self.shared_limit // 1024} KiB), "
                f"tensor cores: {'yes' if self.has_mma else 'no'}")


def _interpreted_type():
    try:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction
    except ImportError:  # pragma: no cover
        return ()


def _as_jit(kernel, memo: dict):
    """A compilable JITFunction for ``kernel`` (a JITFunction, or an interpreter's InterpretedFunction)."""
    if isinstance(kernel, JITFunction):
        return kernel
    if not isinstance(kernel, _interpreted_type()):
        raise TypeError(f"expected a @triton.jit kernel, got {type(kernel).__name__}")
    if id(kernel) in memo:
        return memo[id(kernel)]
    fn = kernel.fn
    scope = dict(fn.__globals__)
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__module__, clone.__qualname__, clone.__doc__ = fn.__module__, fn.__qualname__, fn.__doc__
    clone.__annotations__ = dict(fn.__annotations__)
    jit = JITFunction(clone)
    memo[id(kernel)] = jit
    for name, value in fn.__globals__.items():
        if isinstance(value, _interpreted_type()):
            scope[name] = _as_jit(value, memo)
    return jit


def _interpreter_original(value):
    """The language function behind an interpreter patch, or None when ``value`` is not one.

    Under TRITON_INTERPRET=1, Triton swaps ``tl.core`` functions (``mul``, ``program_id``, ...) for
    wrappers that run them on NumPy, and undoes the swap after a launch; but a ``@triton.jit`` helper
    called as a device function patches the modules in its own globals and never undoes it. A notebook
    that compiled a kernel after such a call failed with "'value' object has no attribute 'dtype'"
    (the compiler then ran the interpreter's version of ``tensor.__mul__``). Each wrapper keeps the
    original in its ``member`` default.
    """
    defaults = getattr(value, "__kwdefaults__", None)
    if getattr(value, "__module__", "") == "triton.runtime.interpreter" and defaults and "member" in defaults:
        return defaults["member"]
    return None


@contextlib.contextmanager
def _compiling(memo: dict):
    """Triton's language helpers (tl.cdiv, ...) as JITFunctions and the interpreter switch off, restored after."""
    from triton import knobs

    modules = [tl, tl.standard, tl.math]
    saved = []
    old = knobs.runtime.interpret
    try:
        knobs.runtime.interpret = False
        for owner in (tl, tl.core, tl.math, tl.standard, tl.core.tensor):
            for name, value in list(vars(owner).items()):
                original = _interpreter_original(value)
                if original is not None:  # a patch the interpreter left behind (see below)
                    saved.append((owner, name, value))
                    setattr(owner, name, original)
        for module in modules:
            for name, value in list(vars(module).items()):
                if isinstance(value, _interpreted_type()):
                    saved.append((module, name, value))
                    setattr(module, name, _as_jit(value, memo))
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        knobs.runtime.interpret = old


def _cuobjdump() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _registers(cubin: bytes) -> int:
    """Registers per thread of the cubin ptxas made, from ``cuobjdump -res-usage``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(_cuobjdump()), "-res-usage", str(path)], capture_output=True, text=True,
                             check=True).stdout
    return max((int(m) for m in re.findall(r"REG:(\d+)", out)), default=0)


def _ptxas_log(ptx: str, arch: int) -> str:
    """``ptxas -v``'s report on ``ptx``, with the flags Triton compiles with (for a kernel Triton took
    from its cache, where no ptxas ran in this process)."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        return subprocess.run([str(get_ptxas(arch).path), "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                              capture_output=True, text=True, check=True).stderr


def _spill_bytes(log: str) -> tuple[int, int]:
    """(spill stores + spill loads, stack frame) in bytes per thread, from a ``ptxas -v`` log.

    Spilled registers live in the stack frame: ``cuobjdump -res-usage``'s LOCAL column stays 0 for
    them (measured: FlashAttention configs with 0 LOCAL spill hundreds of bytes), so the count comes
    from ptxas itself.
    """
    stores = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log))
    loads = sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", log))
    stack = max((int(v) for v in re.findall(r"(\d+) bytes stack frame", log)), default=0)
    return stores + loads, stack


def triton_version() -> str:
    """The Triton whose compiler made a report (reports change with it: record it next to them)."""
    return triton.__version__


def compile_report(kernel, signature: dict, constexprs: dict, arch: int = 90, *, num_warps: int = 4,
                   num_stages: int = 3, divisible_by_16=()) -> Report:
    """Compile ``kernel`` for ``sm_<arch>`` and report registers, spills, shared memory and tensor cores.

    ``signature`` maps every non-constexpr argument to its Triton type (``'*fp16'``, ``'i32'``, ``'fp32'``);
    ``constexprs`` maps the constexpr arguments to values. ``divisible_by_16`` names the arguments a
    launch would specialise as multiples of 16 (pointers from torch, which aligns its allocations,
    and integers such as strides and lengths that are multiples of 16): Triton compiles a launch that
    way, and the alignment changes vector widths, registers and spills (measured: the FlashAttention
    forward 128 x 64, 8 warps, d = 128 spills 128 bytes on sm_90 without it, none with it). Raises
    Triton's ``CompilationError`` when the kernel does not compile for that target.
    """
    if arch not in SHARED_LIMIT:
        raise ValueError(f"arch must be one of {sorted(SHARED_LIMIT)}, got {arch!r}")
    memo: dict = {}
    with _compiling(memo):
        fn = _as_jit(kernel, memo)
        names = fn.arg_names
        unknown = set(signature) | set(constexprs)
        unknown -= set(names)
        if unknown:
            raise ValueError(f"{fn.__name__} has no argument(s) {sorted(unknown)}; its arguments are {names}")
        missing = [n for n in names if n not in signature and n not in constexprs]
        if missing:
            raise ValueError(f"give a type (signature) or a value (constexprs) for {missing}")
        aligned = set(divisible_by_16)
        if aligned - set(signature):
            raise ValueError(f"divisible_by_16 names {sorted(aligned - set(signature))}, not in the signature")
        sig = {n: ("constexpr" if n in constexprs else signature[n]) for n in names}
        consts = {(names.index(n),): v for n, v in constexprs.items()}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    spills, stack = _spill_bytes(_ptxas_log(ptx, arch))
    has_mma = bool(re.search(r"\b(wgmma|mma)\.", ptx))
    return Report(arch=arch, registers=_registers(compiled.asm["cubin"]), spills=spills,
                  shared_bytes=int(compiled.metadata.shared), has_mma=has_mma, ptx=ptx, stack_bytes=stack)
