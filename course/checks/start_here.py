"""Checks for notebook 00 (start here): warm-ups that teach the check and grading workflow."""

from __future__ import annotations

import math
import time

import torch

from .. import runtime
from .core import CheckFailed, assert_close, assert_equal, beside, check, first_counterexample, require

SENTINEL = -12345.0  # written around the output buffer: a kernel without a mask overwrites it


def _callable(fn, what: str) -> None:
    if not callable(fn):
        raise CheckFailed(f"expected {what}, got {type(fn).__name__} {fn!r}"[:200])


@check
def relu(fn):
    """``fn(x)`` returns max(x, 0) for a Python float, as a float."""
    _callable(fn, "a function relu(x)")
    cases = [(0.0,), (1.0,), (-1.0,), (2.5,), (-0.5,), (-1e9,), (3e9,)]  # smallest magnitudes first
    bad = first_counterexample(fn, lambda x: max(x, 0.0), cases)
    if bad is not None:
        got = fn(*bad)
        hint = "negative inputs map to 0, not to their absolute value" if bad[0] < 0 and got == -bad[0] else \
            "relu(x) is x for x >= 0 and 0 otherwise"
        raise CheckFailed(f"relu({bad[0]}) should be {max(bad[0], 0.0)}, got {got!r}\n  hint: {hint}")
    assert_equal(type(fn(-2.0)), float, name="type of relu(-2.0)", hint="return a float (0.0, not 0 or a tensor)")
    return f"{len(cases)} values, negative ones included"


@check
def softmax(fn):
    """``fn(x)`` is softmax over the last dimension, stable for large logits."""
    _callable(fn, "a function softmax(x)")
    g = torch.Generator().manual_seed(0)
    cases = [torch.zeros(1, 1), torch.tensor([[1.0, 2.0, 3.0]]), torch.randn(2, 5, generator=g),
             torch.randn(3, 4, 7, generator=g)]
    # float32 softmax of values in [-3, 3]: the reference and any straightforward implementation
    # agree to a few ulps; 1e-6 absolute is ~10 ulps of the largest probability.
    for x in cases:
        assert_close(fn(x.clone()), torch.softmax(x, dim=-1), atol=1e-6, rtol=1e-5, name=f"softmax of shape {tuple(x.shape)}",
                     inputs={"x": x}, hint="normalise over the last dimension: x.exp() / x.exp().sum(-1, keepdim=True)")
    big = torch.tensor([[1000.0, 1001.0, 1002.0]])  # exp(1000) overflows float32
    assert_close(fn(big.clone()), torch.softmax(big, dim=-1), atol=1e-6, rtol=1e-5, name="softmax of large logits",
                 inputs={"x": big}, hint="subtract the row maximum before exp(): softmax(x) = softmax(x - max(x))")
    return "4 shapes and logits near 1000"


@check
def vector_add(kernel, block: int = 64):
    """Launch ``kernel[(cdiv(n, BLOCK),)](x, y, out, n, BLOCK=block)`` for several n; the mask must guard the tail.

    Inputs and output are slices of larger buffers whose tail holds a sentinel, so a kernel that
    stores past ``n`` (no mask) changes the sentinel and fails, without touching foreign memory.
    """
    import triton

    require(hasattr(kernel, "__getitem__"), "expected a @triton.jit kernel (launched as kernel[grid](...)), got "
            f"{type(kernel).__name__}")
    if not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block!r}")
    device = runtime.device()  # a compiled kernel needs GPU tensors; the interpreter takes CPU ones
    for n in (1, block - 1, block, block + 1, 3 * block + 5):  # smallest first; the tails are the point
        grid = triton.cdiv(n, block)
        room = grid * block + block
        g = torch.Generator().manual_seed(n)
        x_buf = torch.randn(room, generator=g).to(device)
        y_buf = torch.randn(room, generator=g).to(device)
        out_buf = torch.full((room,), SENTINEL, device=device)
        kernel[(grid,)](x_buf, y_buf, out_buf, n, BLOCK=block)
        # x + y in float32 is exact to the rounding of one add on both sides: equal, not just close
        assert_close(out_buf[:n].cpu(), (x_buf[:n] + y_buf[:n]).cpu(), atol=0.0, rtol=0.0, name=f"out[:{n}]",
                     hint="each program handles offsets pid * BLOCK + arange(0, BLOCK); did you add pid * BLOCK?")
        spilled = int((out_buf[n:].cpu() != SENTINEL).sum())
        require(spilled == 0, f"n={n}: the kernel wrote {spilled} element(s) past the end of out (index >= n)\n"
                "  hint: load and store with mask=offsets < n")
    return "n = 1 ... 3*BLOCK+5, nothing written past n"


def _sleep_4_ms():
    time.sleep(0.004)


def _do_nothing():
    return None


@check
def compare(fn):
    """``fn(fns, repeats)`` returns rows {name, ms, speedup} timed with course.bench, speedup vs the first."""

    _callable(fn, "a function compare(fns, repeats)")
    # the timed functions run where fn runs: when the grader judges, in the submission's kernel,
    # so that no round trip to the grader is timed
    rows = fn(beside({"slow": _sleep_4_ms, "fast": _do_nothing}, fn), repeats=5)
    require(isinstance(rows, list) and len(rows) == 2, f"expected a list of 2 rows, got {rows!r}"[:300])
    require(all(isinstance(r, dict) for r in rows), f"each row must be a dict, got {rows!r}"[:300])
    assert_equal([r.get("name") for r in rows], ["slow", "fast"], name="names, in the order given")
    for r in rows:
        require(set(r) >= {"name", "ms", "speedup"}, f"row {r!r} lacks one of the keys name, ms, speedup"[:300])
        require(isinstance(r["ms"], float) and math.isfinite(r["ms"]), f"ms must be a finite float, got {r['ms']!r}")
    # time.sleep(0.004) sleeps at least 4 ms; the OS may add a few ms on a loaded machine, never less
    require(rows[0]["ms"] >= 3.5, f"'slow' sleeps 4 ms per call but ms = {rows[0]['ms']:.4g}\n"
            "  hint: bench.time_fn(...).median_ms is in milliseconds already; do not convert")
    assert_close(torch.tensor(float(rows[0]["speedup"])), torch.tensor(1.0), atol=1e-9, rtol=0,
                 name="speedup of the baseline", hint="speedup = baseline ms / this ms, so the baseline's is 1")
    require(rows[1]["speedup"] > 1.0, f"'fast' does nothing, so its speedup over 'slow' must be > 1, got "
            f"{rows[1]['speedup']!r}\n  hint: speedup = baseline_ms / ms (not ms / baseline_ms)")
    return "order, units and speedup direction"
