"""Checks for notebook 03: LoRA (Hu et al., ICLR 2022, arXiv 2106.09685).

Every check builds its own small inputs (seeded), smallest first, and compares against a
reference computed here or in :mod:`course.lora`. Tolerances, where a result is not exact:

* float32 results of the same products summed in another order agree to a few ulps times the
  reduction length; on O(1) values with reductions of <= 64 terms, ``atol=1e-5, rtol=1e-5``
  leaves room for that only (a missing scale or a transposed factor is off by > 1e-2);
* float16 kernels round their inputs' products the same way but accumulate in fp32 and round
  the rank-r activations once more; ``atol=rtol=1e-2`` on O(1) outputs (fp16 has 11 bits: one
  rounding is 5e-4 relative, a handful of them stays below 1e-2). The same on a GPU: fp16 ``tl.dot``
  multiplies exactly and accumulates in fp32 there too. bfloat16 (GPU only) keeps 8 bits: 8x that.
* float32 *kernels compiled for a GPU* (3.6, 3.7): ``tl.dot`` on fp32 is TF32 unless the kernel asks for
  ``input_precision="ieee"``, so each product is off by up to 2^-10 relative and a k-long product by
  ~2 * 2^-11 * sqrt(k) of its scale (:mod:`course.checks.tolerance`); the output goes through two
  chained products (x A^T, then its B^T product, added to x W^T): twice that, times a safety factor 2,
  with k the longest reduction. At k = 64: 3.1e-2 (errors of 8e-4 to 7e-3 were seen on a GPU; a missing
  scale or a transposed factor is off by O(1)). In the CPU interpreter fp32 ``tl.dot`` is exact: 1e-5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import lora as lora_ref
from .. import runtime
from . import tolerance
from ..models.tinygpt import GPTConfig, TinyGPT
from .core import (CheckFailed, assert_close, assert_equal, assert_tensor, beside, check, kind, require,
                   seeded_call, set_parameter, square_sum_grads)

ATOL, RTOL = 1e-5, 1e-5  # float32, equivalent arithmetic (module docstring)
FP16_TOL = 1e-2  # float16 inputs, fp32 accumulation (module docstring)
BF16_TOL = 8e-2  # bfloat16 (GPU only): 8 bits instead of 11, 8x FP16_TOL (module docstring)


def kernel_tol(dtype: torch.dtype, k: int) -> float:
    """atol = rtol for a LoRA kernel's output with reductions of up to ``k`` terms (module docstring)."""
    if dtype == torch.float16:
        return FP16_TOL
    if dtype == torch.bfloat16:
        return BF16_TOL
    if not tolerance.compiled():
        return ATOL
    return 2 * 2 * tolerance.dot_error(torch.float32, k, on_gpu=True)  # two chained products, safety 2


# --- 3.1 training memory ----------------------------------------------------------------------


def _memory_reference(n_params, n_trainable, mixed_precision):
    if mixed_precision:  # bf16 weights and gradients; fp32 master weights, Adam m and v
        weights, gradients, optimizer = 2 * n_params, 2 * n_trainable, 12 * n_trainable
    else:  # everything fp32
        weights, gradients, optimizer = 4 * n_params, 4 * n_trainable, 8 * n_trainable
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer,
            "total": weights + gradients + optimizer}


@check
def training_memory(fn):
    """fn(n_params, n_trainable, mixed_precision=False) -> dict of bytes (weights, gradients, optimizer, total)."""
    cases = [(1, 1, False), (1, 0, False), (1, 1, True), (10, 3, False), (10, 3, True),
             (803_584, 16_384, False), (7_000_000_000, 7_000_000_000, True), (70_000_000_000, 32_768_000, True)]
    for n, t, mixed in cases:
        got = fn(n, t, mixed_precision=mixed)
        want = _memory_reference(n, t, mixed)
        label = f"training_memory_bytes({n}, {t}, mixed_precision={mixed})"
        require(isinstance(got, dict), f"{label}: expected a dict, got {type(got).__name__}")
        require(set(want) <= set(got), f"{label}: expected keys {sorted(want)}, got {sorted(got)}")
        for key in want:
            if got[key] != want[key]:
                hint = {
                    "weights": "every parameter is stored, trainable or frozen: n_params times its bytes",
                    "gradients": "only trainable parameters get a gradient",
                    "optimizer": ("Adam keeps two moments (m, v) per trainable parameter"
                                  + ("; in mixed precision also an fp32 master copy: 4 + 4 + 4 bytes"
                                     if mixed else ", 4 bytes each in fp32")),
                    "total": "total = weights + gradients + optimizer",
                }[key]
                raise CheckFailed(f"{label}[{key!r}]: expected {want[key]:,} bytes, got {got[key]!r}\n  hint: {hint}")
    for bad in [(-1, 0), (5, 6), (2.5, 1)]:
        try:
            fn(*bad)
        except (ValueError, TypeError):
            continue
        raise CheckFailed(f"training_memory_bytes{bad} should raise ValueError (or TypeError): counts must be "
                          "ints with 0 <= n_trainable <= n_params")
    return f"{len(cases)} cases, fp32 and mixed precision, TinyGPT to 70B; bad counts rejected"


# --- 3.2 LoRALinear ---------------------------------------------------------------------------


def _require_lora_layer(layer, base, r, label):
    require(getattr(layer, "base", None) is base,
            f"{label}: layer.base must be the nn.Linear you wrapped (the same object, not a copy)")
    for name in ("lora_A", "lora_B"):
        require(isinstance(getattr(layer, name, None), nn.Parameter),
                f"{label}: layer.{name} must be an nn.Parameter, got {kind(getattr(layer, name, None))}")
    assert_tensor(layer.lora_A.detach(), f"{label}: lora_A", shape=(r, base.in_features))
    assert_tensor(layer.lora_B.detach(), f"{label}: lora_B", shape=(base.out_features, r))


@check
def lora_linear(cls):
    """cls(base, r, alpha, dropout): frozen base, A random (r x in), B zero (out x r), scaling alpha/r."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    for d_in, d_out, r, alpha in [(4, 3, 1, 1.0), (4, 3, 2, 4.0), (16, 8, 4, 8.0), (32, 48, 8, 16.0)]:
        label = f"LoRALinear(nn.Linear({d_in}, {d_out}), r={r}, alpha={alpha})"
        base = beside(nn.Linear(d_in, d_out, bias=True), cls)  # the grader's judge: a copy in the kernel
        w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
        layer = cls(base, r=r, alpha=alpha)
        _require_lora_layer(layer, base, r, label)
        require(abs(float(layer.scaling) - alpha / r) < 1e-12,
                f"{label}: scaling should be alpha / r = {alpha / r}, got {layer.scaling!r}")
        require(not base.weight.requires_grad and not base.bias.requires_grad,
                f"{label}: the base layer's weight and bias must be frozen (requires_grad=False)")
        require(layer.lora_A.requires_grad and layer.lora_B.requires_grad, f"{label}: lora_A and lora_B must be trainable")
        require(torch.count_nonzero(layer.lora_B) == 0,
                f"{label}: lora_B must start at zero, so that the adapted model starts as the pretrained one"
                + ("\n  hint: A and B look swapped: A is random, B is zero" if torch.count_nonzero(layer.lora_A) == 0
                   else ""))
        require(torch.count_nonzero(layer.lora_A) == layer.lora_A.numel(),
                f"{label}: lora_A must be random (nonzero), or B never receives a gradient")
        require(getattr(layer, "merged", None) is False, f"{label}: layer.merged must start as False")
        assert_equal(base.weight.detach(), w0, name=f"{label}: base.weight (must not change)")
        x = torch.randn(5, d_in, generator=gen)
        # B = 0: the output is exactly the base layer's, bit for bit.
        assert_close(layer(x), F.linear(x, w0, b0), atol=0, rtol=0, name=f"{label}: output at initialisation",
                     inputs={"x": x}, hint="with B = 0 the update B A x is exactly zero: return base(x) + that")
        set_parameter(layer, "lora_B", torch.randn(layer.lora_B.shape, generator=gen))
        layer.eval()
        out = layer(x)
        want = F.linear(x, w0, b0) + alpha / r * (x @ layer.lora_A.detach().T) @ layer.lora_B.detach().T
        hint = "y = base(x) + (alpha / r) * (x A^T) B^T"
        if out.shape == want.shape:
            unscaled = F.linear(x, w0, b0) + (x @ layer.lora_A.detach().T) @ layer.lora_B.detach().T
            if alpha != r and torch.allclose(out, unscaled, atol=1e-5):
                hint = "the update is not scaled: multiply it by self.scaling = alpha / r"
        assert_close(out, want, atol=ATOL, rtol=RTOL, name=f"{label}: output with B != 0", inputs={"x": x}, hint=hint)
        # Gradients reach A and B only.
        layer.zero_grad(set_to_none=True)
        grads = square_sum_grads(layer, x, ["base.weight", "base.bias", "lora_A", "lora_B"])
        require(grads["base.weight"] is None and grads["base.bias"] is None,
                f"{label}: a gradient reached the frozen base layer; only lora_A and lora_B may train")
        a_ref = layer.lora_A.detach().clone().requires_grad_(True)
        b_ref = layer.lora_B.detach().clone().requires_grad_(True)
        (F.linear(x, w0, b0) + alpha / r * (x @ a_ref.T) @ b_ref.T).square().sum().backward()
        for name, ref in (("lora_A", a_ref), ("lora_B", b_ref)):
            grad = grads[name]
            require(grad is not None, f"{label}: {name}.grad is None after backward()")
            assert_close(grad, ref.grad, atol=1e-4, rtol=1e-4, name=f"{label}: {name}.grad")
        # merged=True: the update already lives in base.weight, forward is the base layer alone.
        layer.merged = True
        assert_close(layer(x), F.linear(x, w0, b0), atol=0, rtol=0, name=f"{label}: output when merged",
                     hint="when self.merged is True, return self.base(x) only (the update is inside W already)")
        layer.merged = False
    # Dropout acts on the adapter's input only, and only in training mode.
    base = beside(nn.Linear(64, 32), cls)
    layer = cls(base, r=4, alpha=4.0, dropout=0.5)
    x = torch.randn(8, 64, generator=gen)
    layer.train()
    assert_close(layer(x), base(x), atol=0, rtol=0, name="dropout=0.5, train mode, B = 0",
                 hint="dropout belongs on the adapter path only: base(x) + scaling * B A dropout(x)")
    set_parameter(layer, "lora_B", torch.randn(layer.lora_B.shape, generator=gen))
    layer.eval()
    clean = layer(x)
    want = base(x) + (x @ layer.lora_A.detach().T) @ layer.lora_B.detach().T
    assert_close(clean, want, atol=ATOL, rtol=RTOL, name="dropout=0.5, eval mode",
                 hint="in eval mode dropout is the identity: use an nn.Dropout module (self.dropout)")
    layer.train()
    noisy = seeded_call(layer, 3, x)
    require(not torch.allclose(noisy, clean), "dropout=0.5 in train mode changed nothing: apply self.dropout to "
                                              "the adapter's input")
    torch.manual_seed(3)
    mask = F.dropout(torch.ones_like(x), 0.5, training=True)
    assert_close(noisy, base(x) + ((x * mask) @ layer.lora_A.detach().T) @ layer.lora_B.detach().T, atol=ATOL,
                 rtol=RTOL, name="dropout=0.5, train mode",
                 hint="apply dropout once, to x, on the adapter path: self.dropout(x) @ A^T @ B^T")
    return "4 shapes: init, scaling, frozen base, gradients to A and B only, merged flag, dropout on the adapter"


# --- 3.3 injection ----------------------------------------------------------------------------


def _tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=2, d_model=32))


@check
def inject_lora(fn):
    """fn(model, r, alpha, targets=('q_proj', 'v_proj'), dropout) replaces those linears by LoRALinear."""
    idx = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    for r, targets in [(1, ("q_proj", "v_proj")), (4, ("q_proj", "v_proj")), (2, ("k_proj", "out_proj", "up"))]:
        model = _tiny_gpt()
        before = model(idx).detach()
        model = beside(model, fn)  # the grader's judge: a copy in the kernel, where fn changes it
        originals = {n: m for n, m in model.named_modules() if kind(m) == "Linear"}
        label = f"inject_lora(model, r={r}, alpha=8, targets={targets})"
        names = fn(model, r=r, alpha=8.0, targets=targets)
        expected = [f"blocks.{i}.{'ffn' if t in ('up', 'down') else 'attn'}.{t}" for i in range(2) for t in targets]
        require(isinstance(names, (list, tuple)), f"{label}: return the list of replaced module names, got "
                                                  f"{type(names).__name__}")
        require(sorted(names) == sorted(expected), f"{label}: expected to replace {sorted(expected)}, got {sorted(names)}")
        modules = dict(model.named_modules())
        for name in expected:
            layer = modules[name]
            require(hasattr(layer, "lora_A") and hasattr(layer, "lora_B"),
                    f"{label}: model.{name} is a {kind(layer)}, expected a LoRALinear")
            require(layer.base is originals[name], f"{label}: model.{name}.base must be the original nn.Linear")
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        want_trainable = {f"{n}.lora_{x}" for n in expected for x in "AB"}
        if trainable != want_trainable:
            extra = sorted(trainable - want_trainable)[:4]
            raise CheckFailed(f"{label}: trainable parameters should be exactly the adapters' lora_A and lora_B; "
                              f"also trainable: {extra}; missing: {sorted(want_trainable - trainable)[:4]}\n"
                              "  hint: freeze every parameter of the model (requires_grad_(False)) before adding adapters")
        d = 32
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        want_count = sum(r * (d + (4 * d if t == "up" else d)) for t in targets for _ in range(2))
        require(count == want_count, f"{label}: expected {want_count} trainable parameters, got {count}")
        assert_close(model(idx), before, atol=0, rtol=0, name=f"{label}: logits right after injection",
                     hint="B starts at zero, so the adapted model must compute exactly what it did before")
    model = beside(_tiny_gpt(), fn)
    try:
        fn(model, r=2, alpha=2.0, targets=("qproj",))
    except (ValueError, KeyError):
        pass
    else:
        raise CheckFailed("inject_lora(model, targets=('qproj',)) should raise ValueError: no module is named "
                          "'qproj', and a typo that silently trains nothing is worse than an error")
    return "default q, v targets and custom ones; only A and B train; logits unchanged at injection; typo rejected"


# --- 3.4 merge and unmerge --------------------------------------------------------------------


class _StandIn(nn.Module):
    """A LoRA layer with the notebook's attribute names, so this check does not depend on 3.2."""

    def __init__(self, d_in, d_out, r, alpha, gen):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, d_in, generator=gen) / math.sqrt(d_in))
        self.lora_B = nn.Parameter(torch.randn(d_out, r, generator=gen))
        self.scaling = alpha / r
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


@check
def merge_unmerge(merge, unmerge):
    """merge(layer): W += scaling * B A, merged = True; unmerge(layer) undoes it."""
    gen = torch.Generator().manual_seed(0)
    for d_in, d_out, r, alpha in [(2, 2, 1, 1.0), (8, 4, 2, 8.0), (64, 32, 8, 16.0)]:
        label = f"layer {d_out}x{d_in}, r={r}, alpha={alpha}"
        layer = beside(_StandIn(d_in, d_out, r, alpha, gen), merge)
        w0 = layer.base.weight.detach().clone()
        x = torch.randn(6, d_in, generator=gen)
        unmerged = layer(x).detach()
        merge(layer)
        require(layer.merged is True, f"{label}: merge(layer) must set layer.merged = True (forward then skips the "
                                      "adapter path; otherwise the update counts twice)")
        want_w = w0 + alpha / r * layer.lora_B.detach() @ layer.lora_A.detach()
        # One float32 rounding of W + s B A per element: a few ulps of |W| + |s B A| (r <= 8 terms).
        hint = "W' = W + (alpha / r) B A, in place on layer.base.weight"
        if torch.allclose(layer.base.weight, w0 + layer.lora_B.detach() @ layer.lora_A.detach(), atol=1e-5) and alpha != r:
            hint = "the merged update is missing layer.scaling"
        assert_close(layer.base.weight.detach(), want_w, atol=ATOL, rtol=RTOL, name=f"{label}: merged weight", hint=hint)
        require(not layer.base.weight.requires_grad, f"{label}: the merged base weight must stay frozen")
        assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5, name=f"{label}: merged output vs unmerged output",
                     hint="merging must not change what the layer computes")
        try:
            merge(layer)
        except RuntimeError:
            pass
        else:
            raise CheckFailed(f"{label}: merging an already merged layer should raise RuntimeError (it would add "
                              "the update twice)")
        unmerge(layer)
        require(layer.merged is False, f"{label}: unmerge(layer) must set layer.merged = False")
        # W + dW - dW: two roundings, each below one ulp of |W| + |dW| (~1e-7 relative).
        assert_close(layer.base.weight.detach(), w0, atol=1e-6, rtol=1e-5, name=f"{label}: weight after unmerge",
                     hint="unmerge subtracts exactly what merge added: W = W' - (alpha / r) B A")
        assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5, name=f"{label}: output after unmerge")
        try:
            unmerge(layer)
        except RuntimeError:
            pass
        else:
            raise CheckFailed(f"{label}: unmerging a layer that is not merged should raise RuntimeError")
    return "3 layers: merged output equal (atol 1e-5), unmerge restores W (atol 1e-6), double merge/unmerge refused"


# --- 3.5 subspace similarity ------------------------------------------------------------------


def _phi_reference(m1, m2, i, j):
    u1 = torch.linalg.svd(m1.double(), full_matrices=False).U[:, :i]
    u2 = torch.linalg.svd(m2.double(), full_matrices=False).U[:, :j]
    return float((u1.T @ u2).square().sum() / min(i, j))


@check
def subspace_similarity(fn):
    """fn(m1, m2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), U from the SVD of each matrix."""
    gen = torch.Generator().manual_seed(0)
    d = 16
    # Smallest cases first: identical, orthogonal, and half-overlapping column spaces.
    eye = torch.eye(d)
    cases = [
        (eye[:, :1] * 3.0, eye[:, :1], 1, 1, 1.0, "the same direction"),
        (eye[:, :1], eye[:, 1:2], 1, 1, 0.0, "orthogonal directions"),
        (eye[:, :2] @ torch.diag(torch.tensor([2.0, 1.0])), eye[:, [0, 2]] @ torch.diag(torch.tensor([2.0, 1.0])), 2, 2,
         0.5, "2-D spans sharing one direction"),
    ]
    for m1, m2, i, j, want, what in cases:
        got = fn(m1, m2, i, j)
        require(isinstance(got, (float, int)) or (isinstance(got, torch.Tensor) and got.numel() == 1),
                f"subspace_similarity on {what}: return a number (float), got {type(got).__name__}")
        require(abs(float(got) - want) < 1e-5, f"subspace_similarity on {what} (i={i}, j={j}): expected {want}, "
                                                f"got {float(got):.6g}")
    for rows, rank1, cols, i, j in [(16, 4, 8, 1, 1), (16, 4, 8, 2, 8), (32, 8, 16, 8, 4), (32, 8, 16, 3, 16)]:
        # m1 has rank `rank1` (i <= rank1, so its top-i subspace is well defined); m2 shares part of its
        # column space plus noise, so the answer is neither 0 nor 1.
        m1 = torch.randn(rows, rank1, generator=gen) @ torch.randn(rank1, cols, generator=gen)
        m2 = m1 @ torch.randn(cols, cols, generator=gen) * 0.3 + torch.randn(rows, cols, generator=gen) * 0.5
        got = float(fn(m1, m2, i, j))
        want = _phi_reference(m1, m2, i, j)
        hint = "take U (left singular vectors, the columns) of each matrix, keep the top i and j, divide by min(i, j)"
        if abs(got - want * min(i, j)) < 1e-4 and min(i, j) > 1:
            hint = "divide ||U1^T U2||_F^2 by min(i, j), so that identical subspaces score 1"
        # float32 vs float64 SVDs of these well-conditioned matrices: the subspaces agree to ~1e-5.
        require(abs(got - want) < 1e-4, f"subspace_similarity(m1 {tuple(m1.shape)}, m2 {tuple(m2.shape)}, i={i}, j={j}): "
                                        f"expected {want:.6f}, got {got:.6f}\n  hint: {hint}")
        require(-1e-6 <= got <= 1 + 1e-6, f"similarity must lie in [0, 1], got {got}")
    for bad in [(0, 1), (1, 40)]:
        try:
            fn(torch.randn(16, 4), torch.randn(16, 8), *bad)
        except (ValueError, IndexError):
            continue
        raise CheckFailed(f"subspace_similarity(m1 (16, 4), m2 (16, 8), i={bad[0]}, j={bad[1]}) should raise "
                          "ValueError: i and j must be between 1 and the number of singular vectors")
    return "identical, orthogonal and half-shared spans; 4 random pairs against float64; bad i, j rejected"


# --- 3.6 the fused kernel ---------------------------------------------------------------------


def _lora_operands(m, k, n, r, dtype, gen):
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / math.sqrt(k)
    a = torch.randn(r, k, generator=gen) / math.sqrt(k)
    b = torch.randn(n, r, generator=gen) / math.sqrt(r)
    return [t.to(dtype) for t in (x, w, a, b)]


@check
def fused_lora(fn):
    """fn(x, weight, lora_A, lora_B, scale) = x W^T + scale (x A^T) B^T from one Triton kernel."""
    gen = torch.Generator().manual_seed(0)
    device = runtime.device()  # a compiled kernel needs GPU tensors; the interpreter takes CPU ones
    shapes = [(1, 16, 16, 1), (5, 40, 24, 4), (33, 64, 48, 16), (20, 48, 72, 3)]  # ragged on purpose
    dtypes = [torch.float32, torch.float16]
    if runtime.triton_mode() == "compiled":  # the CPU interpreter computes bf16 tl.dot wrongly
        dtypes.append(torch.bfloat16)
    for dtype in dtypes:
        for m, k, n, r in shapes:
            tol = (kernel_tol(dtype, max(k, r)),) * 2
            x, w, a, b = (t.to(device) for t in _lora_operands(m, k, n, r, dtype, gen))
            scale = 2.0
            out = fn(x, w, a, b, scale)
            want = lora_ref.lora_reference(x.double(), w.double(), a.double(), b.double(), scale)
            label = f"lora_fused, {str(dtype)[6:]} x {tuple(x.shape)} W {tuple(w.shape)} r={r}"
            assert_tensor(out, label, shape=(m, n), dtype=dtype)
            hint = "y = x W^T + scale * (x A^T) B^T; mask loads and stores at the ragged edges"
            base_only = (x.double() @ w.double().T)
            if torch.allclose(out.double(), base_only, atol=1e-3):
                hint = "only x W^T came out: add scale * (x A^T) B^T in the epilogue, before the store"
            elif torch.allclose(out.double(), lora_ref.lora_reference(x.double(), w.double(), a.double(), b.double(), 1.0),
                                atol=1e-3):
                hint = "the adapter term is not multiplied by scale"
            assert_close(out.double(), want, atol=tol[0], rtol=tol[1], name=label, hint=hint)
    # The wrapper refuses what the kernel cannot do.
    x, w, a, b = (t.to(device) for t in _lora_operands(4, 16, 16, 2, torch.float32, gen))
    for bad, what in [((x.double(), w.double(), a.double(), b.double()), "float64 operands"),
                      ((x, w, a.T.contiguous(), b), "A passed as (in, r)"),
                      ((x, w, a, b.half()), "mixed dtypes")]:
        try:
            fn(*bad, 1.0)
        except (TypeError, ValueError):
            continue
        raise CheckFailed(f"lora_fused should raise TypeError/ValueError for {what}")
    return (f"4 ragged shapes in {', '.join(str(d)[6:] for d in dtypes)} (bf16 is GPU-only), one launch; "
            "bad dtypes and shapes refused")


# --- 3.7 many adapters in one batch -----------------------------------------------------------


@check
def multi_lora(fn):
    """fn(x, weight, lora_As, lora_Bs, adapter_ids, scale): row m uses adapter adapter_ids[m] (-1: none)."""
    gen = torch.Generator().manual_seed(0)
    device = runtime.device()  # a compiled kernel needs GPU tensors; the interpreter takes CPU ones
    for m, k, n, r, n_adapters, ids in [
        (1, 4, 3, 1, 1, [0]),
        (2, 4, 3, 2, 2, [1, 0]),
        (3, 8, 6, 2, 2, [-1, 1, -1]),
        (12, 32, 24, 4, 3, None),
        (40, 64, 48, 8, 8, None),
    ]:
        x = torch.randn(m, k, generator=gen)
        w = torch.randn(n, k, generator=gen) / math.sqrt(k)
        a = torch.randn(n_adapters, r, k, generator=gen) / math.sqrt(k)
        b = torch.randn(n_adapters, n, r, generator=gen)
        ids = torch.tensor(ids) if ids is not None else torch.randint(-1, n_adapters, (m,), generator=gen)
        x, w, a, b, ids = (t.to(device) for t in (x, w, a, b, ids))
        scale = 0.5
        out = fn(x, w, a, b, ids, scale)
        want = lora_ref.lora_multi_reference(x.double(), w.double(), a.double(), b.double(), ids, scale)
        label = f"multi_lora_forward, {m} rows, {n_adapters} adapters, ids {ids.tolist()[:12]}"
        assert_tensor(out, label, shape=(m, n))
        hint = "row m: x_m W^T + scale * (x_m A[ids[m]]^T) B[ids[m]]^T, and nothing added where ids[m] == -1"
        if (ids == -1).any():
            wrapped = torch.where(ids < 0, n_adapters - 1, ids)
            if torch.allclose(out.double(), lora_ref.lora_multi_reference(x.double(), w.double(), a.double(),
                                                                          b.double(), wrapped, scale), atol=1e-4):
                hint = "id -1 was used as an index (the last adapter); it means 'no adapter': mask those rows"
        tol = kernel_tol(torch.float32, max(k, r))
        assert_close(out.double(), want, atol=tol, rtol=tol, name=label, hint=hint, inputs={"adapter_ids": ids})
    return "5 batches, 1 to 8 adapters, rows without an adapter (-1) included"
