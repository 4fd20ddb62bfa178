"""Visible checks: one module per notebook, imported there as ``check``.

    from course.checks import transformer as check
    check.positional_encoding(positional_encoding)

The framework (verdict lines, results the grader reads, ``assert_close``) is in :mod:`.core`.
"""

from .core import RESULTS, CheckFailed, Result, assert_close, assert_equal, assert_tensor, check, require

__all__ = ["RESULTS", "CheckFailed", "Result", "assert_close", "assert_equal", "assert_tensor", "check",
           "require"]
