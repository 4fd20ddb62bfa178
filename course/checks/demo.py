"""Checks for the demo exercises (the start-here notebook and the grader's own tests)."""

from __future__ import annotations

import torch

from .core import assert_close, assert_equal, check, first_counterexample, require


@check
def add(fn):
    """``fn(a, b)`` returns a + b for integers, smallest counterexample first."""
    cases = [(a, b) for total in range(0, 7) for a in range(-total, total + 1) for b in (total - abs(a),)]
    bad = first_counterexample(fn, lambda a, b: a + b, cases)
    require(bad is None, f"add{bad} should be {sum(bad) if bad else ''}, got {fn(*bad) if bad else ''}")
    return f"{len(cases)} integer pairs"


@check
def mean(fn):
    """``fn(x)`` returns the mean of a 1-D float tensor."""
    for n in (1, 2, 7, 100):
        x = torch.linspace(-1, 3, n)
        assert_close(fn(x), x.mean(), atol=1e-6, rtol=1e-6, name=f"mean of {n} values", inputs={"x": x},
                     hint="divide the sum by the number of elements")
    assert_equal(type(fn(torch.ones(3))), torch.Tensor, name="return type")
    return "4 lengths"
