"""Checks for notebook 04: BitNet (arXiv 2310.11453) and BitNet b1.58 (arXiv 2402.17764).

References come from :mod:`course.bitnet` or are written here. Where results are integers (codes,
packed words, the kernel's int32 products and its float32 scaling of them) the checks demand exact
equality. Floating-point comparisons state their tolerance next to the call:

* quantization steps and scales: ``rtol=1e-6`` (one float32 division or mean, computed in another
  order, differs by an ulp or two: 1.2e-7 each);
* BitLinear outputs and gradients: float32 matmuls over <= 64 terms of O(1) values, ``atol=1e-5``
  and ``rtol=1e-4`` for outputs, ``1e-4`` for gradients, which also pass through a LayerNorm.

An absmax code sits exactly between two integers only when ``x * 127 / max|x|`` is a tie; two
correct implementations may then round differently by the last ulp of that product, so codes
within 1e-3 of a tie may differ by one. Everywhere else they must be equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import bitnet as ref
from .. import runtime
from .core import CheckFailed, assert_close, assert_equal, assert_tensor, check, forward_backward, is_instance, require


def _pair(out, label):
    require(isinstance(out, tuple) and len(out) == 2, f"{label}: return a pair (codes, scale), got "
                                                      f"{type(out).__name__}")
    return out


# --- 4.1 absmax activations -------------------------------------------------------------------


@check
def absmax_quantize(fn):
    """fn(x) -> (codes int8, step float32 (..., 1)): round(x / step) with step = max|x_row| / 127."""
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("one row", torch.tensor([[0.5, -1.0, 0.25]])),
        ("rows of different scale", torch.tensor([[1.0, -2.0], [100.0, 50.0], [-0.001, 0.0005]])),
        ("an all-zero row", torch.tensor([[0.0, 0.0, 0.0], [3.0, -1.0, 2.0]])),
        ("3-D activations", torch.randn(2, 5, 64, generator=gen) * 3),
        ("outliers", torch.cat([torch.randn(4, 31, generator=gen), torch.full((4, 1), 40.0)], dim=1)),
    ]
    for what, x in cases:
        label = f"absmax_quantize on {what} {tuple(x.shape)}"
        codes, step = _pair(fn(x.clone()), label)
        want_codes, want_step = ref.quantize_activations(x)
        assert_tensor(codes, f"{label}: codes", shape=x.shape, dtype=torch.int8)
        assert_tensor(step, f"{label}: step", shape=(*x.shape[:-1], 1), dtype=torch.float32)
        require(torch.isfinite(step).all() and (step > 0).all(),
                f"{label}: step must be positive and finite, got {step.flatten().tolist()[:6]}\n"
                "  hint: clamp max|x| from below by eps before dividing, so an all-zero row gives codes 0")
        hint = "step = max|x| over the last dimension (one per row/token, keepdim=True) / 127"
        if step.numel() > 1 and torch.allclose(step, torch.full_like(step, float(want_step.max()))):
            hint = "one step for the whole tensor: take the max over the last dimension only (per token)"
        # step: one float32 division of the same max by 127, in any order: rtol 1e-6
        assert_close(step, want_step, atol=0, rtol=1e-6, name=f"{label}: step", hint=hint)
        t = x.float() / want_step
        near_tie = ((t - t.floor()) - 0.5).abs() < 1e-3
        diff = (codes.to(torch.int32) - want_codes.to(torch.int32)).abs()
        bad = (diff > 0) & ~near_tie | (diff > 1)
        if bad.any():
            index = tuple(int(i) for i in bad.nonzero()[0])
            hint = "codes = round(x / step), clamped to [-127, 127]"
            if (codes.to(torch.int32) == t.floor().clamp(-127, 127).to(torch.int32))[~near_tie].all():
                hint = "the codes were truncated: round to the nearest integer (torch.round), not floor/int()"
            raise CheckFailed(f"{label}: code at index {index} is {int(codes[index])}, expected "
                              f"{int(want_codes[index])} (x = {float(x[index]):.6g}, step = "
                              f"{float(want_step[index[:-1]]):.6g})\n  hint: {hint}")
        require(int(codes.abs().max()) <= 127, f"{label}: codes must stay in [-127, 127]")
    return "5 inputs: per-row steps, zero rows, outliers, 3-D; codes exact away from rounding ties"


# --- 4.2 and 4.3 weights ----------------------------------------------------------------------


def _binarize_reference(w):
    alpha = w.mean()
    return torch.where(w > alpha, 1, -1).to(torch.int8), w.abs().mean().float()


def _check_weight_quantizer(fn, reference, name, cases, allowed):
    for what, w in cases:
        label = f"{name} on {what} {tuple(w.shape)}"
        codes, scale = _pair(fn(w.clone()), label)
        want_codes, want_scale = reference(w)
        assert_tensor(codes, f"{label}: codes", shape=w.shape, dtype=torch.int8)
        values = set(codes.unique().tolist())
        require(values <= allowed, f"{label}: codes must lie in {sorted(allowed)}, got {sorted(values)}")
        scale = torch.as_tensor(scale)
        require(scale.numel() == 1, f"{label}: the scale must be one number per matrix, got shape {tuple(scale.shape)}")
        yield label, codes, want_codes, scale.reshape(()).float(), want_scale


@check
def binarize(fn):
    """fn(w) -> (codes int8 in {-1, +1}, beta): Sign(W - mean(W)) and beta = mean|W|."""
    gen = torch.Generator().manual_seed(0)
    cases = [("a 2x2 matrix", torch.tensor([[0.1, 0.2], [0.3, 0.4]])),
             ("a row whose middle equals the mean", torch.tensor([[1.0, 2.0, 3.0]])),
             ("an offset random matrix", torch.randn(8, 16, generator=gen) + 0.5),
             ("a 64x32 matrix", torch.randn(64, 32, generator=gen) * 0.02)]
    for label, codes, want_codes, scale, want_scale in _check_weight_quantizer(fn, _binarize_reference, "binarize",
                                                                                cases, {-1, 1}):
        hint = "codes = +1 where W > mean(W), else -1 (the paper's Sign maps 0 to -1)"
        if (codes == 1).all() and not (want_codes == 1).all():
            hint = "every code is +1: centre W on its mean (W - alpha) before taking the sign"
        assert_equal(codes, want_codes, name=f"{label}: codes", hint=hint)
        # mean|W| in float32: rtol 1e-6 covers another summation order
        assert_close(scale, want_scale, atol=0, rtol=1e-6, name=f"{label}: beta",
                     hint="beta = mean(|W|) over all entries (the L1 norm divided by n*m), of W itself, not W - alpha")
    return "4 matrices, the tie at the mean included"


@check
def ternarize(fn):
    """fn(w, eps=1e-5) -> (codes int8 in {-1, 0, +1}, gamma): RoundClip(W / (gamma + eps), -1, 1), gamma = mean|W|."""
    gen = torch.Generator().manual_seed(0)
    cases = [("one row", torch.tensor([[0.1, -0.5, 2.0, 0.0]])),
             ("an all-zero matrix", torch.zeros(2, 3)),
             ("a random matrix", torch.randn(8, 16, generator=gen)),
             ("a 64x32 matrix", torch.randn(64, 32, generator=gen) * 0.02)]
    for label, codes, want_codes, scale, want_scale in _check_weight_quantizer(fn, ref.ternarize, "ternarize",
                                                                                cases, {-1, 0, 1}):
        hint = "codes = round(W / (mean|W| + eps)) clamped to [-1, 1]"
        if (codes != 0).all() and (want_codes == 0).any():
            hint = "no zeros at all: round W / gamma to the nearest integer before clamping (sign() is the binary case)"
        assert_equal(codes, want_codes, name=f"{label}: codes", hint=hint)
        assert_close(scale, want_scale, atol=0, rtol=1e-6, name=f"{label}: gamma",
                     hint="gamma = mean(|W|) over all entries (absmean), not the max")
    return "4 matrices: zeros kept, clipping to +-1, the all-zero matrix without a division by zero"


# --- 4.4 BitLinear ----------------------------------------------------------------------------


def _bitlinear_reference(x, weight, bias, ternary):
    """LayerNorm, absmax int8 activations, binary or ternary weights, straight-through gradients."""
    xn = F.layer_norm(x, (x.shape[-1],))
    codes, step = ref.quantize_activations(xn)
    x_q = xn + (codes.to(xn.dtype) * step - xn).detach()
    w_codes, w_scale = (ref.ternarize if ternary else _binarize_reference)(weight)
    w_q = weight + (w_codes.to(weight.dtype) * w_scale - weight).detach()
    return F.linear(x_q, w_q, bias)


@check
def bit_linear(cls):
    """cls(in_features, out_features, bias=False, ternary=False): LN -> absmax int8 x binary/ternary W, STE."""
    gen = torch.Generator().manual_seed(0)
    for d_in, d_out, bias, ternary in [(4, 2, False, False), (4, 2, False, True), (16, 8, True, False),
                                       (64, 48, False, True), (64, 48, True, False)]:
        kind = "ternary" if ternary else "binary"
        label = f"BitLinear({d_in}, {d_out}, bias={bias}, ternary={ternary})"
        torch.manual_seed(0)
        layer = cls(d_in, d_out, bias=bias, ternary=ternary)
        require(is_instance(layer, torch.nn.Module), f"{label}: expected an nn.Module")
        require(tuple(layer.weight.shape) == (d_out, d_in), f"{label}: weight must be (out, in) = {(d_out, d_in)}, got "
                                                            f"{tuple(layer.weight.shape)}")
        require((layer.bias is not None) == bias, f"{label}: bias={bias} not honoured")
        x = torch.randn(3, 5, d_in, generator=gen) * 2 + 1
        upstream = torch.randn(3, 5, d_out, generator=gen)
        seen = forward_backward(layer, x, upstream)  # in the learner's process when grading
        out = seen["out"]
        x_ref = x.detach().clone().requires_grad_(True)
        weight, layer_bias = layer.weight.detach(), layer.bias
        w_ref = weight.clone().requires_grad_(True)
        b_ref = layer_bias.detach().clone().requires_grad_(True) if bias else None
        want = _bitlinear_reference(x_ref, w_ref, b_ref, ternary)
        hint = f"y = F.linear(Q8(LN(x)), Q_{kind}(W)) + bias, LN without affine parameters, per-token absmax"
        plain_codes, plain_step = ref.quantize_activations(x.detach())
        w_codes, w_scale = (ref.ternarize if ternary else _binarize_reference)(weight)
        skipped_ln = F.linear(plain_codes * plain_step, w_codes * w_scale, layer_bias)
        if isinstance(out, torch.Tensor) and out.shape == skipped_ln.shape and torch.allclose(out, skipped_ln, atol=1e-4):
            hint = "normalize first: the paper puts a LayerNorm (no affine) before the absmax quantization"
        assert_close(out, want, atol=1e-5, rtol=1e-4, name=f"{label}: output", hint=hint)
        require(seen["requires_grad"], f"{label}: the output does not depend differentiably on the weight or the input\n"
                                       "  hint: rounding has zero gradient; use the straight-through estimator "
                                       "w + (w_q - w).detach() for the weight and likewise for x")
        want.backward(upstream)
        weight_grad, x_grad = seen["grads"]["weight"], seen["x_grad"]
        require(weight_grad is not None and weight_grad.abs().sum() > 0,
                f"{label}: no gradient reached the latent weight\n  hint: rounding has zero gradient; use the "
                "straight-through estimator w + (w_q - w).detach() (likewise for x)")
        require(x_grad is not None and x_grad.abs().sum() > 0, f"{label}: no gradient reached the input x (STE on x too)")
        # gradients through LayerNorm and the identity STE, float32: atol/rtol 1e-4
        assert_close(weight_grad, w_ref.grad, atol=1e-4, rtol=1e-4, name=f"{label}: weight.grad",
                     hint="straight-through: the gradient of W_q is passed to W unchanged")
        assert_close(x_grad, x_ref.grad, atol=1e-4, rtol=1e-4, name=f"{label}: x.grad",
                     hint="straight-through on the activations, and the LayerNorm's own gradient before it")
    return "5 layers, binary and ternary, with and without bias: outputs and STE gradients"


# --- 4.5 and 4.6 packing ----------------------------------------------------------------------


def _ternary_cases(gen):
    shapes = [(1, 1), (1, 16), (2, 15), (3, 17), (4, 33), (5, 100), (8, 64)]
    for shape in shapes:
        yield f"random {shape}", torch.randint(-1, 2, shape, generator=gen, dtype=torch.int8)
    for value in (-1, 0, 1):
        for shape in ((1, 16), (3, 21)):
            yield f"all {value:+d} {shape}", torch.full(shape, value, dtype=torch.int8)


def _rejects(fn, args, label, errors=(ValueError, TypeError)):
    try:
        fn(*args)
    except errors:
        return
    raise CheckFailed(f"{label} should raise ValueError or TypeError")


@check
def pack_ternary(pack, unpack):
    """pack(w (..., K) in {-1,0,1}) -> int32 (..., ceil(K/16)); unpack(packed, K) -> int8 (..., K)."""
    gen = torch.Generator().manual_seed(0)
    count = 0
    for what, w in _ternary_cases(gen):
        k = w.shape[-1]
        packed = pack(w.clone())
        want = ref.pack_ternary(w)
        assert_tensor(packed, f"pack_ternary({what})", shape=want.shape, dtype=torch.int32)
        hint = ("code = w + 1 (0, 1, 2), weight i of a word in bits 2i and 2i+1 (code << 2i), "
                "padding with code 1 (a zero weight) when K is not a multiple of 16")
        if k % 16 and torch.equal(packed[..., :-1], want[..., :-1]):
            hint = "only the last word differs: pad the missing weights of a row with code 1 (weight 0), not code 0"
        assert_equal(packed, want, name=f"pack_ternary({what}): packed words", hint=hint)
        back = unpack(packed, k)
        assert_tensor(back, f"unpack_ternary(pack_ternary({what}), {k})", shape=w.shape, dtype=torch.int8)
        assert_equal(back, w, name=f"unpack_ternary(pack_ternary({what}), {k})",
                     hint="shift each word right by 2i, mask with 3, subtract 1; drop the padding after K")
        count += 1
    _rejects(pack, (torch.tensor([[2, 0]], dtype=torch.int8),), "pack_ternary of a weight equal to 2")
    _rejects(pack, (torch.tensor([[0.5, 0.0]]),), "pack_ternary of float weights")
    _rejects(unpack, (ref.pack_ternary(torch.zeros(2, 16, dtype=torch.int8)), 40),
             "unpack_ternary(packed with 1 word per row, k=40)")
    return f"{count} tensors (random, all -1, all 0, all +1, K not a multiple of 16): exact layout and round trip"


@check
def pack_base3(pack, unpack):
    """pack(w in {-1,0,1}) -> uint8 (ceil(n/5),), 5 trits a byte; unpack(packed, n) -> int8 (n,)."""
    gen = torch.Generator().manual_seed(0)
    count = 0
    for what, w in _ternary_cases(gen):
        n = w.numel()
        packed = pack(w.clone())
        want = ref.pack_base3(w)
        assert_tensor(packed, f"pack_base3({what})", shape=want.shape, dtype=torch.uint8)
        assert_equal(packed, want, name=f"pack_base3({what}): bytes",
                     hint="flatten, code = w + 1, byte = sum_i code_i * 3**i over 5 weights (i = 0 first), "
                          "pad the last group with code 1 (a zero weight)")
        back = unpack(packed, n)
        assert_tensor(back, f"unpack_base3(pack_base3({what}), {n})", shape=(n,), dtype=torch.int8)
        assert_equal(back, w.reshape(-1), name=f"unpack_base3(pack_base3({what}), {n})",
                     hint="repeat 5 times: trit = byte % 3, byte //= 3; subtract 1; drop the padding after n")
        count += 1
    w = torch.randint(-1, 2, (1000,), generator=gen, dtype=torch.int8)
    bits = pack(w).numel() * 8 / w.numel()
    require(abs(bits - 1.6) < 1e-9, f"1000 weights should take 200 bytes (1.6 bits each), got {bits:.3f} bits each")
    _rejects(pack, (torch.tensor([-2, 0], dtype=torch.int8),), "pack_base3 of a weight equal to -2")
    return f"{count} tensors round-trip, exact byte layout, 1.6 bits per weight"


# --- 4.7 the packed kernel --------------------------------------------------------------------


@check
def ternary_matmul(fn):
    """fn(x_codes, x_step, w_packed, w_scale, k) == course.bitnet.ternary_matmul_reference, bit for bit."""
    shapes = [(1, 16, 16), (1, 40, 80), (3, 33, 100), (17, 48, 64), (5, 70, 160)]  # (M, N, K), ragged on purpose
    for m, n, k in shapes:
        p = ref.make_problem(m, n, k, device=runtime.device(), seed=m + n + k)
        out = fn(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], k)
        want = ref.ternary_matmul_reference(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], k)
        label = f"ternary matmul, x {m}x{k} int8, W {n}x{k} ternary"
        assert_tensor(out, label, shape=(m, n), dtype=torch.float32)
        hint = ("accumulate x_codes @ W^T exactly in int32 (tl.dot of int8 tiles), then one float32 multiply: "
                "acc * x_step[m] * w_scale, in that order")
        plain = (p["x_codes"].double() @ ref.unpack_ternary(p["w_packed"], k).double().T).float()
        if torch.equal(out, plain):
            hint = "the integer product is right but not scaled back: multiply by x_step (per row) and w_scale"
        elif (out - want).abs().max() > 1e-3 * want.abs().max():
            hint += "; check the unpacking (shift by 2 * (k % 16), mask with 3, subtract 1) and the masks"
        # integers are exact and the float32 scaling is one fixed sequence of multiplies: equal bits
        assert_equal(out, want, name=label, hint=hint)
    p = ref.make_problem(2, 16, 32, device=runtime.device())
    for args, what in [((p["x"].float(), p["x_step"], p["w_packed"], p["w_scale"], 32), "float activations"),
                       ((p["x_codes"], p["x_step"], p["w_packed"].to(torch.int64), p["w_scale"], 32), "int64 words"),
                       ((p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], 48), "k that does not match x")]:
        _rejects(fn, args, f"the kernel's wrapper given {what}")
    return "5 shapes incl. batch 1 and K not a multiple of 16: bit-exact; bad operands refused"
