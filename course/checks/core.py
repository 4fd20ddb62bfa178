"""The check framework behind every exercise.

A *check* is a function decorated with :func:`check`. It receives the learner's code, runs it on
test cases (smallest first, so the first failure is the smallest counterexample), and either
returns normally (pass) or raises :class:`CheckFailed` with a message that says what was expected
and what came back. The decorator turns that into one short line, green for a pass and red for a
failure, and records a :class:`Result` that the grader reads.

Writing a check::

    @check
    def softmax(fn):
        for x in cases():
            assert_close(fn(x), torch.softmax(x, -1), atol=1e-6, rtol=1e-5, name="softmax(x)",
                         inputs={"x": x})
        return "3 shapes, large logits included"
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch

GREEN, RED, BOLD, RESET = "\033[32m", "\033[31m", "\033[1m", "\033[0m"

#: Every result recorded in this process, in order. The grader reads the last one after each check.
RESULTS: list["Result"] = []


#: Added to the seeds checks pass through :func:`grading_seed`: 0 in a notebook, so outputs are
#: reproducible; the grader's judge draws a fresh value for every grading, so that a submission
#: cannot hard-code the outputs of fixed inputs.
SALT = 0


def grading_seed(seed: int) -> int:
    """``seed`` in a notebook; ``seed`` plus a salt drawn at grading time when the judge checks."""
    return seed + SALT


class CheckFailed(AssertionError):
    """Raised inside a check when the learner's code gives a wrong answer."""


@dataclass
class Result:
    check: str
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        if self.passed:
            detail = f" ({self.message})" if self.message else ""
            return f"{GREEN}{BOLD}✓ {self.check} passed{RESET}{detail}"
        return f"{RED}{BOLD}✗ {self.check} failed{RESET}\n{self.message}"


#: Reads back a verdict line that :meth:`Result.render` printed (ANSI colours removed first):
#: groups are the mark (✓/✗), the check's name, ``passed``/``failed`` and the rest of the line.
#: ``python -m course status`` parses saved notebook outputs with it; keep the two in step.
VERDICT_LINE = re.compile(r"^\s*([✓✗])\s+(\w+)\s+(passed|failed)\b(.*)$", re.MULTILINE)
#: ANSI colour codes, as :meth:`Result.render` adds them.
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def check(fn: Callable[..., str | None]) -> Callable[..., None]:
    """Decorate a check: catch failures and errors, print one verdict, record a :class:`Result`.

    A check never raises into the learner's notebook: ``NotImplementedError`` reads as "not done
    yet", any other exception as an error in the learner's code with its last frames.
    """

    @functools.wraps(fn)
    def run_check(*args, **kwargs) -> None:
        name = fn.__name__
        try:
            detail = fn(*args, **kwargs)
            result = Result(name, True, detail or "")
        except CheckFailed as failure:
            result = Result(name, False, str(failure))
        except NotImplementedError as stub:
            result = Result(name, False, f"not implemented yet: {stub}")
        except Exception as error:  # the learner's code raised: show where, briefly
            stub_label = not_implemented_inside(error)
            if stub_label is not None:
                result = Result(name, False, f"not implemented yet: {stub_label}")
            else:
                result = Result(name, False, describe_exception(error))
        RESULTS.append(result)
        print(result.render())

    run_check.is_check = True
    return run_check


def observation(fn: Callable) -> Callable:
    """Mark a helper that must run next to the learner's code: autograd through it, its ranks, a loop.

    In a notebook it is an ordinary call. When the grader's judge calls it with a proxy of the
    learner's code among the arguments, the call runs in the submission's kernel instead (its
    other arguments are pickled there) and returns the raw observations (outputs, gradients,
    transcripts) as plain values; the check then judges them in the grader's process. So an
    observation helper returns what it saw and never decides pass or fail.
    """

    @functools.wraps(fn)
    def observe(*args, **kwargs):
        from ..grading import remote  # the judge's proxies; a notebook never has any

        proxy = remote.find_remote(*args, *kwargs.values())
        if proxy is None:
            return fn(*args, **kwargs)
        return proxy._channel.observe(observe, args, kwargs)

    observe.observed = fn
    return observe


def _kernel_copy(value):
    return value


def beside(value, learner_code):
    """``value`` where ``learner_code`` lives: in a notebook ``value`` itself; when the grader's
    judge checks a submission, a copy of ``value`` made in the submission's kernel (a proxy to it).

    For checks whose learner code changes an object in place (replaces a model's layers, merges
    weights): the change happens to the copy, and the check reads it back through the proxy.
    """
    from ..grading import remote

    proxy = remote.find_remote(learner_code)
    return value if proxy is None else proxy._channel.observe(_kernel_copy, (value,), {})


@observation
def set_parameter(module, name: str, values) -> None:
    """``module.<name>.copy_(values)`` without autograd, in whichever process the module lives."""
    with torch.no_grad():
        module.get_parameter(name).copy_(values)


@observation
def square_sum_grads(module, x, names) -> dict:
    """Backpropagate ``module(x).square().sum()``; return the ``.grad`` of each named parameter."""
    module(x).square().sum().backward()
    params = dict(module.named_parameters())
    return {n: params[n].grad if n in params else None for n in names}


@observation
def seeded_call(module, seed: int, *args):
    """``module(*args)`` right after ``torch.manual_seed(seed)`` (dropout masks the check can redo)."""
    torch.manual_seed(seed)
    return module(*args)


@observation
def is_instance(value, cls) -> bool:
    """``isinstance(value, cls)``, asked where ``value`` lives."""
    return isinstance(value, cls)


@observation
def forward_backward(module, x, upstream, names=("weight",)) -> dict:
    """``out = module(x)`` with ``x`` requiring grad, then ``out.backward(upstream)`` when the shapes
    allow; returns ``out``, whether it required grad, ``x.grad`` and the named parameters' grads."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    differentiable = isinstance(out, torch.Tensor) and out.requires_grad
    if differentiable and out.shape == upstream.shape:
        out.backward(upstream)
    params = dict(module.named_parameters())
    return {"out": out.detach() if isinstance(out, torch.Tensor) else out, "requires_grad": differentiable,
            "x_grad": x.grad, "grads": {n: params[n].grad if n in params else None for n in names}}


@observation
def fields_of(value):
    """A record as plain data, ``(class name, {field: value})`` for dataclasses (recursively, also
    inside lists and tuples); other values unchanged. Compare records with it, not with ``==``: a
    learner's record is a proxy when the grader's judge checks, and proxies are equal only to
    themselves."""

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return (type(v).__name__, {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)})
        if isinstance(v, (list, tuple)):
            return type(v)(plain(x) for x in v)
        return v

    return plain(value)


@observation
def grad_of(fn, args, wrt=(0,), kwargs=None, output=None, params=()) -> dict:
    """Call ``fn(*args, **kwargs)`` with ``args[i]`` for ``i`` in ``wrt`` as fresh leaves that require
    grad, take ``output`` of a tuple result, backpropagate it when it requires grad, and return
    ``{"value", "result", "requires_grad", "grads", "params"}``: the value (detached), the whole
    result, whether the value required grad, the inputs' grads (None where unused) and, for each
    ``(i, name)`` in ``params``, the grad of parameter ``name`` of module ``args[i]`` (then zeroed)."""
    args = [a.detach().clone().requires_grad_(True) if i in wrt else a for i, a in enumerate(args)]
    result = fn(*args, **(kwargs or {}))
    value = result[output] if output is not None and isinstance(result, tuple) and len(result) > output else result
    differentiable = isinstance(value, torch.Tensor) and value.requires_grad
    if differentiable:
        value.backward(torch.ones_like(value))
    found = []
    for i, name in params:
        p = args[i].get_parameter(name)
        found.append(None if p.grad is None else p.grad.clone())
        args[i].zero_grad()
    return {"value": value.detach() if isinstance(value, torch.Tensor) else value,
            "result": tuple(r.detach() if isinstance(r, torch.Tensor) else r for r in result)
            if isinstance(result, tuple) else None,
            "requires_grad": differentiable, "grads": [args[i].grad for i in wrt], "params": found}


def kind(value) -> str:
    """The class name of ``value``; for a proxy of the learner's object, the name of its class."""
    from ..grading import remote

    return remote.type_name(value)


def not_implemented_inside(error: BaseException) -> str | None:
    """The label of a stub's ``NotImplementedError`` hidden inside another exception, else None.

    A stub that raises inside a Triton kernel reaches the check wrapped: the CPU interpreter
    re-raises it as an InterpreterError (the stub is the ``__cause__``), the GPU compiler as a
    CompilationError whose message quotes the ``raise`` line. Either way it means "not done yet".
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, NotImplementedError):
            return str(seen)
        match = re.search(r"NotImplementedError\(\s*['\"](Exercise [^'\"]+)['\"]", str(seen))
        if match:
            return match.group(1)
        seen = seen.__cause__ or seen.__context__
    return None


def describe_exception(error: BaseException, frames: int = 3) -> str:
    """`TypeError: ...` plus the last few frames, enough to find the line without a wall of text."""
    where = getattr(error, "remote_where", None)  # raised in the submission's kernel (grading)
    if where is None:
        tb = traceback.extract_tb(error.__traceback__)[-frames:]
        where = "".join(f"  at {f.name} (line {f.lineno}): {(f.line or '').strip()}\n" for f in tb)
    return f"your code raised {type(error).__name__}: {error}\n{where}".rstrip()


# --- assertions used by checks -------------------------------------------------------------


def describe_tensor(t: Any) -> str:
    """One line about a value: shape and dtype for tensors, values too when it is tiny."""
    if isinstance(t, torch.Tensor):
        text = f"tensor shape {tuple(t.shape)} dtype {t.dtype} device {t.device.type}"
        if t.numel() <= 16:
            text += f" values {t.detach().cpu().flatten().tolist()}"
        return text
    return f"{type(t).__name__} {t!r}"[:200]


def describe_inputs(inputs: dict[str, Any] | None) -> str:
    if not inputs:
        return ""
    lines = "".join(f"\n    {k}: {describe_tensor(v)}" for k, v in inputs.items())
    return f"\n  on inputs:{lines}"


def require(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def assert_tensor(value: Any, name: str, *, shape: Iterable[int] | None = None,
                  dtype: torch.dtype | None = None, inputs: dict | None = None) -> torch.Tensor:
    """Fail unless ``value`` is a tensor with the given shape and dtype."""
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{name}: expected a torch.Tensor, got {type(value).__name__}"
                          + describe_inputs(inputs))
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise CheckFailed(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}"
                          + describe_inputs(inputs))
    if dtype is not None and value.dtype != dtype:
        raise CheckFailed(f"{name}: expected dtype {dtype}, got {value.dtype}" + describe_inputs(inputs))
    return value


def assert_close(actual: Any, expected: torch.Tensor, *, atol: float, rtol: float, name: str = "output",
                 inputs: dict | None = None, hint: str | None = None) -> None:
    """Fail unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere.

    Tolerances are required arguments on purpose: every check states, next to its call, why its
    numbers are what they are. The failure names the worst element, its index, and how many
    elements are off.
    """
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    expected = expected.detach()
    assert_tensor(actual, name, shape=expected.shape, inputs=inputs)
    if actual.dtype != expected.dtype and not (actual.is_floating_point() and expected.is_floating_point()):
        raise CheckFailed(f"{name}: expected dtype {expected.dtype}, got {actual.dtype}" + describe_inputs(inputs))
    got = actual.detach().to(torch.float64).cpu()
    want = expected.to(torch.float64).cpu()
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        bad = int((~torch.isfinite(got)).sum())
        index = tuple(int(i) for i in torch.nonzero(~torch.isfinite(got))[0])
        raise CheckFailed(f"{name}: {bad} element(s) are nan or inf, first at index {index}, where "
                          f"{want[index].item():.6g} was expected" + describe_inputs(inputs)
                          + (f"\n  hint: {hint}" if hint else ""))
    error = (got - want).abs()
    allowed = atol + rtol * want.abs()
    wrong = error > allowed
    wrong |= torch.isnan(got) != torch.isnan(want)
    if wrong.any():
        worst = int(torch.argmax(torch.where(wrong, error.nan_to_num(math.inf), torch.zeros_like(error))))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), got.shape)) if got.dim() else ()
        message = (f"{name}: {int(wrong.sum())} of {got.numel()} elements differ beyond "
                   f"atol={atol:g}, rtol={rtol:g}; worst at index {index}: got {got[index].item():.6g}, "
                   f"expected {want[index].item():.6g} (abs error {error[index].item():.3g})")
        raise CheckFailed(message + describe_inputs(inputs) + (f"\n  hint: {hint}" if hint else ""))


def assert_equal(actual: Any, expected: Any, *, name: str = "output", inputs: dict | None = None,
                 hint: str | None = None) -> None:
    """Fail unless two values are exactly equal (tensors elementwise, with shape and dtype)."""
    if isinstance(expected, torch.Tensor):
        assert_tensor(actual, name, shape=expected.shape, dtype=expected.dtype, inputs=inputs)
        if not torch.equal(actual.detach().cpu(), expected.detach().cpu()):
            diff = torch.nonzero(actual.detach().cpu() != expected.detach().cpu())
            index = tuple(int(i) for i in diff[0])
            raise CheckFailed(f"{name}: {len(diff)} element(s) differ; first at index {index}: got "
                              f"{actual[index].item()}, expected {expected[index].item()}"
                              + describe_inputs(inputs) + (f"\n  hint: {hint}" if hint else ""))
        return
    if actual != expected:
        raise CheckFailed(f"{name}: expected {expected!r}, got {actual!r}" + describe_inputs(inputs)
                          + (f"\n  hint: {hint}" if hint else ""))


def first_counterexample(fn: Callable, reference: Callable, cases: Iterable[tuple], *,
                         same: Callable[[Any, Any], bool] | None = None):
    """Return the first case (in the order given) where ``fn`` and ``reference`` disagree, or None.

    Pass the cases smallest first and the first disagreement *is* the shrunk counterexample: the
    cheap version of a shrinker, which is all the course's small integer inputs need.
    """
    same = same or (lambda a, b: torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)
    for case in cases:
        if not same(fn(*case), reference(*case)):
            return case
    return None
