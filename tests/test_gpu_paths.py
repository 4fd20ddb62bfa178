"""The GPU path, proven on a CPU: launchers refuse CPU tensors for compiled kernels, checks build
their kernels' operands on ``runtime.device()``, and every gradient check fails on all-zero and on
doubled gradients with the tolerances it uses on a GPU (emulated here by patching the mode).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course  # noqa: F401  (first: switches Triton to the interpreter on a CPU)
from course import bitnet, lora, runtime
from course import flash_attention as fa
from course.checks import bitnet as bitnet_checks
from course.checks import core, tolerance
from course.checks import flash_attention as fa_checks
from course.checks import lora as lora_checks

MODES = ["interpreter", "compiled"]


def passed(check, *args) -> bool:
    check(*args)
    return core.RESULTS[-1].passed


@pytest.fixture
def compiled(monkeypatch):
    """Triton reports compiled mode (as on a GPU); kernels defined earlier still run in the interpreter."""
    monkeypatch.setattr(runtime, "triton_mode", lambda: "compiled")


@pytest.fixture(params=MODES)
def tolerance_mode(request, monkeypatch):
    """Checks pick the tolerances of this mode (only the tolerances: kernels still run here)."""
    monkeypatch.setattr(tolerance, "compiled", lambda: request.param == "compiled")
    return request.param


# --- 1. no CPU tensor reaches a compiled launch -------------------------------------------------


def _lora_operands(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=gen, dtype=dtype) for s in ((4, 16), (8, 16), (2, 16), (8, 2))]


def test_launchers_refuse_cpu_tensors_when_compiled(compiled):
    x, w, a, b = _lora_operands()
    with pytest.raises(ValueError, match="compiles this kernel for the GPU"):
        lora.lora_linear(x, w, a, b, 1.0)
    with pytest.raises(ValueError, match="compiles this kernel for the GPU"):
        lora.lora_linear_multi(x, w, a[None], b[None], torch.zeros(4, dtype=torch.int64), 1.0)
    p = bitnet.make_problem(2, 16, 32, device="cpu")
    with pytest.raises(ValueError, match="compiles this kernel for the GPU"):
        bitnet.ternary_matmul(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], 32)
    q, k, v = fa_checks._qkv(1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="Triton is compiling for the GPU"):
        fa.flash_attention(q, k, v)
    with pytest.raises(ValueError, match="Triton is compiling for the GPU"):
        fa.launch_forward(fa._fwd_kernel, q, k, v)


def test_require_kernel_device_names_the_tensor(compiled):
    with pytest.raises(ValueError, match=r"my kernel: w is on cpu"):
        runtime.require_kernel_device("my kernel", w=torch.zeros(2), n=3)
    runtime.require_kernel_device("my kernel", n=3)  # non-tensors are skipped


def test_launchers_take_cpu_tensors_in_the_interpreter():
    x, w, a, b = _lora_operands()
    torch.testing.assert_close(lora.lora_linear(x, w, a, b, 1.0), lora.lora_reference(x, w, a, b, 1.0))


class _Reached(Exception):
    """Raised by a spy once it has seen the operands a check passes to the learner's code."""


def _spy(seen):
    def fn(*args, **kwargs):
        seen.append([t.device.type for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)])
        raise _Reached
    return fn


@pytest.mark.parametrize("name", ["fused_lora", "multi_lora", "ternary_matmul", "triton_forward", "triton_backward",
                                  "vector_add"])
def test_checks_build_kernel_operands_on_the_runtime_device(name, compiled, monkeypatch):
    """Simulate a GPU: runtime.device() says 'meta' (a device that is not the CPU) and the mode says
    compiled; the learner's function or the launcher records the devices of every tensor it gets."""
    monkeypatch.setattr(runtime, "device", lambda: torch.device("meta"))
    seen = []
    if name == "fused_lora":
        lora_checks.fused_lora(_spy(seen))
    elif name == "multi_lora":
        lora_checks.multi_lora(_spy(seen))
    elif name == "ternary_matmul":
        bitnet_checks.ternary_matmul(_spy(seen))
    elif name == "triton_forward":
        monkeypatch.setattr(fa, "launch_forward", _spy(seen))
        fa_checks.triton_forward(fa._fwd_kernel)
    elif name == "triton_backward":
        monkeypatch.setattr(fa, "launch_atomic_backward", _spy(seen))
        # the float64 reference runs on the CPU (meta tensors hold no data): the check moves O and L back
        monkeypatch.setattr(fa_checks, "reference_forward", lambda q, k, v, causal: (
            torch.zeros(q.shape, dtype=torch.float64), torch.zeros(q.shape[:3], dtype=torch.float64)))
        fa_checks.triton_backward(fa._fwd_kernel)
    else:
        from course.checks import start_here

        class Kernel:
            def __getitem__(self, grid):
                return _spy(seen)

        start_here.vector_add(Kernel())
    assert seen, f"{name}: the check never reached the kernel"
    assert all(d == "meta" for call in seen for d in call), f"{name}: tensors on {seen}"


# --- 2. gradient checks fail on zero and doubled gradients, in every mode -----------------------


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _attention_function(factor):
    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal):
            ctx.save_for_backward(q, k, v)
            ctx.causal = causal
            return fa.naive_attention(q, k, v, causal)

        @staticmethod
        def backward(ctx, do):
            q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
            with torch.enable_grad():
                grads = torch.autograd.grad(fa.naive_attention(q, k, v, ctx.causal), (q, k, v), do)
            return (*(g * factor for g in grads), None)

    return Attention


FACTORS = [(1.0, True), (0.0, False), (2.0, False)]


@pytest.mark.parametrize("factor,ok", FACTORS)
def test_autograd_function_check_catches_wrong_gradients(factor, ok, tolerance_mode):
    assert passed(fa_checks.autograd_function, _attention_function(factor)) is ok


@pytest.mark.parametrize("factor,ok", FACTORS)
def test_triton_backward_check_catches_wrong_gradients(factor, ok, tolerance_mode, monkeypatch):
    def launch(kernel, q, k, v, o, lse, do, *, causal, config):
        return tuple((g * factor).to(q.dtype) for g in fa_checks.reference_grads(q, k, v, do, causal))

    monkeypatch.setattr(fa, "launch_atomic_backward", launch)
    assert passed(fa_checks.triton_backward, fa._fwd_kernel) is ok


@pytest.mark.parametrize("factor,ok", FACTORS)
def test_tiled_backward_check_catches_wrong_gradients(factor, ok, tolerance_mode):
    def backward(q, k, v, o, lse, do, causal=False, block_m=16, block_n=16):
        with torch.enable_grad():  # gradcheck calls it inside an autograd.Function's backward
            return tuple(g * factor for g in fa_checks.reference_grads(q, k, v, do, causal))

    assert passed(fa_checks.tiled_backward, backward) is ok


class _LoRA(nn.Module):
    factor = 1.0

    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        return y + _ScaleGrad.apply(self.scaling * (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T, self.factor)


@pytest.mark.parametrize("factor,ok", FACTORS)
def test_lora_linear_check_catches_wrong_gradients(factor, ok, tolerance_mode):
    cls = type("LoRA", (_LoRA,), {"factor": factor})
    assert passed(lora_checks.lora_linear, cls) is ok


class _BitLinear(nn.Linear):
    factor = 1.0

    def __init__(self, d_in, d_out, bias=False, ternary=False):
        super().__init__(d_in, d_out, bias=bias)
        self.ternary = ternary

    def forward(self, x):
        x = F.layer_norm(x, (x.shape[-1],))
        codes, step = bitnet.quantize_activations(x)
        w_codes, w_scale = (bitnet.ternarize if self.ternary else bitnet_checks._binarize_reference)(self.weight)
        w_q = self.weight + (w_codes.to(self.weight.dtype) * w_scale - self.weight).detach()
        return _ScaleGrad.apply(F.linear(x + (codes * step - x).detach(), w_q, self.bias), self.factor)


@pytest.mark.parametrize("factor,ok", FACTORS)
def test_bit_linear_check_catches_wrong_gradients(factor, ok, tolerance_mode):
    cls = type("BitLinear", (_BitLinear,), {"factor": factor})
    assert passed(bitnet_checks.bit_linear, cls) is ok


# --- the tolerances themselves ------------------------------------------------------------------


def test_tolerances_follow_the_mode_and_dtype(monkeypatch):
    assert tolerance.dot_format(torch.float32, on_gpu=True) == "tf32"
    assert tolerance.dot_format(torch.float32, on_gpu=True, ieee=True) == "float32"
    assert tolerance.dot_format(torch.float32, on_gpu=False) == "float32"
    assert tolerance.dot_format(torch.float16, on_gpu=True) == "float16"
    assert tolerance.dot_error(torch.float32, 64, on_gpu=True) == pytest.approx(2 * 2**-11 * 8)
    for mode, fp32 in (("interpreter", 1e-5), ("compiled", 2 * 2 * 2**-11 * 8)):
        monkeypatch.setattr(tolerance, "compiled", lambda m=mode: m == "compiled")
        assert fa_checks._fp32_tol(64) == pytest.approx(fp32)
        assert lora_checks.kernel_tol(torch.float32, 64) == pytest.approx(1e-5 if mode == "interpreter" else 2 * fp32)
        assert lora_checks.kernel_tol(torch.float16, 64) == lora_checks.FP16_TOL
        # every tolerance far below 1 relative: zero and doubled results always fail
        assert max(fa_checks._fp32_grad_tol(128), lora_checks.kernel_tol(torch.float32, 128),
                   5 * fa_checks.BF16_TOL, lora_checks.BF16_TOL) < 0.25
    # the GPU errors seen for a correct fused LoRA kernel (8e-4 to 7e-3) pass with room
    monkeypatch.setattr(tolerance, "compiled", lambda: True)
    assert lora_checks.kernel_tol(torch.float32, 64) > 4 * 7e-3
