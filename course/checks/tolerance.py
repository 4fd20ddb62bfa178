"""Tolerances for checks of Triton kernels, by where the kernel runs and by dtype.

The same check runs a learner's kernel in the CPU interpreter (CI, laptops) and compiled on a GPU,
and the two do not compute the same thing:

* under ``TRITON_INTERPRET=1`` a float32 ``tl.dot`` is a NumPy float32 matmul: exact products,
  float32 sums (unit roundoff u = 2^-24);
* compiled for a GPU, a float32 ``tl.dot`` runs on tensor cores in **TF32** unless the kernel asks
  for ``input_precision="ieee"``: each input is rounded to 10 explicit mantissa bits (u = 2^-11), so
  every product carries a relative error of up to 2u = 2^-10 ~ 1e-3;
* float16 (10 bits, u = 2^-11) and bfloat16 (7 bits, u = 2^-8) ``tl.dot`` multiply exactly and
  accumulate in float32 in both modes: their error comes from rounding *intermediate* results
  (P, dS, the rank-r activations) to the input dtype, the same in both modes.

A ``k``-long dot product of inputs rounded with unit roundoff u has an error of at most
``2 u sum_i |a_i b_i|``; with O(1) operands and errors of random sign it grows like ``2 u sqrt(k)``
times the output scale (:func:`dot_error`). A check multiplies that by a stated safety factor
and by the number of products chained (a gradient goes through two), and keeps its interpreter
tolerance as a floor. Every tolerance stays far below 1 relative, so an all-zero or a doubled
result (off by 100% of the expected value) always fails; ``tests/test_tolerance_mutants.py`` runs
each gradient check on such mutants with these GPU tolerances emulated on the CPU.
"""

from __future__ import annotations

import math

import torch

from .. import runtime

#: Explicit mantissa bits of the numbers ``tl.dot`` multiplies (``tf32``: float32 inputs, compiled).
MANTISSA_BITS = {"float64": 52, "float32": 23, "tf32": 10, "float16": 10, "bfloat16": 7}


def compiled() -> bool:
    """True when Triton kernels compile for a GPU (tests patch this to emulate GPU tolerances on a CPU)."""
    return runtime.triton_mode() == "compiled"


def dot_format(dtype: torch.dtype, *, on_gpu: bool | None = None, ieee: bool = False) -> str:
    """The format ``tl.dot`` rounds its inputs to: ``'tf32'`` for float32 compiled without ``ieee``."""
    name = str(dtype).replace("torch.", "")
    if name not in MANTISSA_BITS:
        raise ValueError(f"no tl.dot tolerance for dtype {dtype}")
    if on_gpu is None:
        on_gpu = compiled()
    return "tf32" if name == "float32" and on_gpu and not ieee else name


def unit_roundoff(fmt: str) -> float:
    """Half an ulp at 1: the largest relative error of rounding one number to ``fmt``."""
    return 2.0 ** -(MANTISSA_BITS[fmt] + 1)


def dot_error(dtype: torch.dtype, k: int, *, on_gpu: bool | None = None, ieee: bool = False) -> float:
    """Typical error of a ``k``-long ``tl.dot`` relative to an O(1) output: ``2 u sqrt(k)``.

    u is the unit roundoff of :func:`dot_format` (each product rounds two inputs: 2u), and k terms
    of random sign add up like sqrt(k). TF32 at k = 64: 2 * 2^-11 * 8 = 7.8e-3.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return 2 * unit_roundoff(dot_format(dtype, on_gpu=on_gpu, ieee=ieee)) * math.sqrt(k)
