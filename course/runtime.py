"""Where the course runs: device choice, seeding, size presets and the Triton switch.

Importing :mod:`course` imports this module first. With no CUDA device it sets
``TRITON_INTERPRET=1`` *before* any Triton kernel is defined, so every kernel in the course runs
(slowly, but exactly) on the CPU; with a CUDA device, kernels compile as usual.

Environment variables a learner or CI may set:

``COURSE_SIZE``      ``small`` or ``full``: problem sizes in notebooks. Default: ``small`` on CPU,
                     ``full`` on GPU.
``COURSE_HEADLESS``  ``1`` when nobody watches (nbval, the grader, CI): progress bars are off and
                     widgets fall back to plain printed output, so outputs are deterministic.
``COURSE_THREADS``   CPU threads torch uses (default 1 when headless, torch's default otherwise).
                     Float sums depend on how work is split between threads, so a training run's
                     numbers change with it: compared notebook outputs never depend on it, and
                     scripts that record results write it into their CSV. One thread also avoids OpenMP
                     spin-waiting when CI runs two notebooks on two cores: measured here under
                     load, a training step took 0.17 s with 1 thread and 2.4 s with 2.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from typing import TypeVar

import numpy as np
import torch

SIZES = ("small", "full")
_T = TypeVar("_T")
_announced = False


def on_gpu() -> bool:
    """True when a CUDA device is available to torch."""
    return torch.cuda.is_available()


def device() -> torch.device:
    """The device notebooks put tensors on: ``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if on_gpu() else "cpu")


def device_name() -> str:
    """A human-readable name of the compute device, used to label measured results."""
    if on_gpu():
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), e.g. 'AMD EPYC' or 'Intel Xeon ...'.

    Recorded with every result that depends on float summation order: two machines of the same
    kind with different processors (SIMD width, BLAS code path) produce different training runs.
    """
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def numeric_config() -> dict[str, str]:
    """What decides float summation order here: processor, ATen's SIMD level, threads, BLAS switches."""
    config = {"cpu_model": cpu_model(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": str(torch.get_num_threads())}
    for name in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"):
        if os.environ.get(name):
            config[name] = os.environ[name]
    return config


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch Generator with the same seed.

    Seeding everything makes a notebook's outputs repeatable, which nbval relies on.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def size_preset() -> str:
    """``'small'`` or ``'full'``: from ``COURSE_SIZE`` if set, else by whether a GPU is present."""
    chosen = os.environ.get("COURSE_SIZE", "").strip().lower()
    if not chosen:
        return "full" if on_gpu() else "small"
    if chosen not in SIZES:
        raise ValueError(f"COURSE_SIZE must be one of {SIZES}, got {chosen!r}")
    return chosen


def pick(small: _T, full: _T) -> _T:
    """Return ``small`` or ``full`` according to :func:`size_preset`.

    Notebooks write ``N = runtime.pick(small=256, full=4096)`` so one cell serves both machines.
    """
    return small if size_preset() == "small" else full


def headless() -> bool:
    """True when outputs must be deterministic: no progress bars, widgets degrade to text."""
    return os.environ.get("COURSE_HEADLESS", "0").strip() not in ("", "0", "false", "no")


def triton_mode() -> str:
    """``'interpreter'`` when Triton kernels run on the CPU, ``'compiled'`` when they compile."""
    return "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled"


def require_kernel_device(kernel: str, **tensors) -> None:
    """Refuse a CPU tensor for a compiled Triton kernel, with a message that says what to do.

    A compiled kernel dereferences its pointers on the GPU: a CPU tensor there is an illegal address
    (or garbage), not a Python error. Under the CPU interpreter every device is fine. ``kernel``
    names the launcher in the message; ``tensors`` maps argument names to tensors (others are skipped).
    """
    if triton_mode() != "compiled":
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device.type != "cuda":
            raise ValueError(f"{kernel}: {name} is on {t.device} but Triton compiles this kernel for the GPU: "
                             "move every operand to the GPU (.to(course.runtime.device())), or import course "
                             "before triton on a machine without a GPU so that kernels run in the CPU interpreter")


def cpu_threads() -> int | None:
    """Torch's CPU thread count for this process: ``COURSE_THREADS`` when set, else 1 when headless
    (tests, grading, scripts that record results), else None (torch's own default).

    Float results that depend on summation order (training runs) change with the thread count, so
    scripts record it with their results and the notebooks run with one thread under nbval.
    """
    text = os.environ.get("COURSE_THREADS")
    if text:
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"COURSE_THREADS must be a positive integer, got {text!r}") from None
        if threads < 1:
            raise ValueError(f"COURSE_THREADS must be a positive integer, got {text!r}")
        return threads
    return 1 if headless() else None


#: The notebooks with Triton kernels (cells with ``@triton.jit``). Triton ships wheels for Linux
#: only, so on macOS and Windows these run except for their Triton cells; every other notebook runs
#: fully everywhere. tests/test_platform.py keeps this list in step with solutions/.
TRITON_NOTEBOOKS = ("00", "02", "03", "04")


def triton_available() -> bool:
    """True when Triton can be imported here (requirements.txt installs it on Linux only).

    False where ``import course`` installed its stand-in (:mod:`course._no_triton`) for a missing Triton.
    """
    if getattr(sys.modules.get("triton"), "__course_stand_in__", False) is True:
        return False
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or half-imported triton counts as absent
        return False


def platform_support(system: str | None = None, has_triton: bool | None = None) -> str:
    """One sentence on which notebooks run fully on this machine; ``import course`` prints it when
    Triton is missing. ``system`` (``platform.system()``) and ``has_triton`` default to this machine.
    """
    import platform

    system = system or platform.system()
    has_triton = triton_available() if has_triton is None else has_triton
    if has_triton:
        return f"{_os_name(system)} with Triton: every notebook runs fully"
    need, why = (("Triton", "pip install -r requirements.txt installs it") if system == "Linux"
                 else ("Linux", "Triton ships for Linux only: use WSL2, the devcontainer or Colab for them"))
    return (f"{_os_name(system)} without Triton: notebooks {', '.join(TRITON_NOTEBOOKS)} need {need} for their "
            f"Triton cells ({why}); every other notebook runs fully")


def _os_name(system: str) -> str:
    return {"Darwin": "macOS"}.get(system, system or "this OS")


def configure_triton() -> None:
    """Switch Triton to its CPU interpreter when there is no GPU, and say so once per process.

    The interpreter is chosen when a kernel is *defined* (``@triton.jit`` reads the variable), so
    this must run before any notebook cell defines a kernel; ``import course`` does it.
    """
    global _announced
    if not on_gpu() and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
        if sys.modules.get("triton") is not None:  # (None there blocks the import: not imported)
            # Kernels already defined keep the compiled path; new ones use the interpreter.
            print("course: triton was imported before course; kernels defined earlier will not "
                  "run on the CPU. Restart the kernel and import course first.")
    threads = cpu_threads()
    if threads is not None and not on_gpu():
        torch.set_num_threads(threads)
    if not _announced:
        _announced = True
        if not triton_available():
            print(f"course: {device_name()}; sizes: {size_preset()}")
        elif triton_mode() == "interpreter":
            print("course: no CUDA device, so Triton kernels run on the CPU in the interpreter "
                  f"(TRITON_INTERPRET=1); sizes: {size_preset()}")
        else:
            print(f"course: {device_name()}, Triton kernels compile; sizes: {size_preset()}")
        if not triton_available():  # said only where it matters: Linux with Triton prints as before
            print(f"course: {platform_support()}")


def progress(iterable=None, **kwargs):
    """A tqdm progress bar (a widget in JupyterLab) that stays silent when headless."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", headless())
    return tqdm(iterable, **kwargs)


def require_floating_point_dtype(name: str, tensor: torch.Tensor, allowed=(torch.float16, torch.bfloat16,
                                                                           torch.float32)) -> None:
    """Refuse bf16 in the Triton interpreter: it computes bf16 ``tl.dot`` wrongly on the CPU.

    (Measured when the course was built: a 16x16 bf16 ``tl.dot`` was off by 2.5e10 under
    ``TRITON_INTERPRET=1`` while fp16 and fp32 were exact.)
    """
    if tensor.dtype not in allowed:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in allowed]}, got {tensor.dtype}")
    if tensor.dtype == torch.bfloat16 and triton_mode() == "interpreter":
        raise TypeError(f"{name} is bfloat16, which the Triton CPU interpreter computes wrongly; "
                        "use float16 or float32 on the CPU (bf16 is tested on a GPU)")
