"""Checks for notebook 02 (FlashAttention): imported there as ``check``.

Every check compares the learner's code with the standard algorithm computed in float64 on the
same inputs (``course.flash_attention.naive_attention``), smallest case first. Triton kernels are
launched through ``course.flash_attention``'s launchers, which validate the inputs and set the grid,
so a check exercises exactly the kernel body the learner wrote.

The gradient checks (Exercises 2.7-2.9) live in :mod:`course.checks.flash_attention_grad` and are
re-exported here, so ``check.tiled_backward`` and friends work as before.
"""

from __future__ import annotations

import math

import torch

from .. import flash_attention as fa
from .. import runtime
from . import tolerance
from .core import assert_close, assert_equal, assert_tensor, check, observation, require

# --- references (float64, straight from the definitions) -----------------------------------------


def reference_hbm_accesses(n: int, d: int, m: int) -> tuple[int, int]:
    """The IO model of the notebook, in elements: (standard attention, tiled attention)."""
    standard = 4 * n * d + 4 * n * n
    block = m // (4 * d)
    blocks = -(-n // block)
    tiled = 2 * n * d + 2 * n * d * blocks + n
    return standard, tiled


def reference_forward(q, k, v, causal=False):
    """(o, lse) of softmax(q k^T / sqrt(d)) v in float64; lse in natural log."""
    q64, k64, v64 = (t.detach().to(torch.float64).cpu() for t in (q, k, v))
    s = (q64 @ k64.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~fa.causal_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    return torch.softmax(s, -1) @ v64, torch.logsumexp(s, -1)


def reference_grads(q, k, v, do, causal=False):
    """(dq, dk, dv) of the float64 standard algorithm for output gradient ``do``."""
    q64, k64, v64 = (t.detach().to(torch.float64).cpu().requires_grad_() for t in (q, k, v))
    fa.naive_attention(q64, k64, v64, causal).backward(do.detach().to(torch.float64).cpu())
    return q64.grad, k64.grad, v64.grad


def _randn(*shape, dtype=torch.float32, scale=1.0, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)


def _qkv(b, h, n_q, n_k, d, dtype=torch.float32, seed=0, scale=1.0, device="cpu"):
    """Seeded q, k, v (the same values on every device); Triton checks pass runtime.device()."""
    return (_randn(b, h, n_q, d, dtype=dtype, scale=scale, seed=seed, device=device),
            _randn(b, h, n_k, d, dtype=dtype, scale=scale, seed=seed + 1, device=device),
            _randn(b, h, n_k, d, dtype=dtype, seed=seed + 2, device=device))


def _case(**kw) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items())


# Tolerances by mode and dtype (derivations in course.checks.tolerance). Every one is far below 1
# relative, so all-zero or doubled outputs and gradients fail in every mode (tests/test_tolerance_mutants.py).
#
# fp32, CPU interpreter: tl.dot is an exact fp32 matmul, so only fp32 summation order differs from the
# float64 reference (~1e-6 on O(1) values): 1e-5 for outputs; gradients sum up to ~80 rows of O(1)
# terms through two chained products, 1e-3.
# fp32, compiled: tl.dot is TF32 (10 mantissa bits): a k-long product is off by ~2 * 2^-11 * sqrt(k) of its
# scale; outputs go through one product per reduction (S = Q K^T over d, O = P V over N_k), so
# k = max(d, N_k), times a safety factor of 2; gradients chain two products (dP = dO V^T, then dS K), so
# twice that. TF32 emulated on the CPU (inputs rounded to 10 bits, fp64 sums) for these checks' cases
# gave errors <= 1.6e-3 on values <= 6, against tolerances of 7.8e-3 (k = 16) to 2.2e-2 (k = 128).
FP32_SAFETY = 2


def _fp32_tol(k: int) -> float:
    if not tolerance.compiled():
        return 1e-5
    return FP32_SAFETY * tolerance.dot_error(torch.float32, k, on_gpu=True)


def _fp32_grad_tol(k: int) -> float:
    return 1e-3 if not tolerance.compiled() else 2 * _fp32_tol(k)


def fp32_tolerance(k: int, *, grad: bool = False) -> float:
    """The fp32 tolerance these checks allow for a ``k``-long reduction, outputs or (``grad``) gradients,
    in the current mode (exact products in the interpreter, TF32 compiled): for cells that compare
    a kernel with the float64 reference themselves."""
    return _fp32_grad_tol(k) if grad else _fp32_tol(k)


# fp16 (both modes: fp16 tl.dot multiplies exactly and accumulates in fp32 on a GPU as in the
# interpreter): inputs are exact in the reference, but P is rounded to fp16 (2^-11 relative) before
# P V and O is stored in fp16, so outputs of size ~1 are off by up to a few 1e-4; 3e-3 leaves room
# without hiding a real bug (a missed rescale or mask is off by 1e-1 or more).
FP16_TOL = 3e-3
# bf16 (GPU only) keeps 7 explicit mantissa bits (2^-8 = 4e-3 relative): ~8x the fp16 tolerance.
BF16_TOL = 3e-2


# --- Exercise 2.1: the IO model -------------------------------------------------------------------


@check
def hbm_accesses(fn):
    """``fn(n, d, m)`` returns (standard, tiled) HBM element accesses of the notebook's IO model."""
    require(callable(fn), f"pass your function, got {type(fn).__name__}")
    cases = [(1, 1, 4), (4, 2, 8), (5, 2, 8), (16, 4, 64), (100, 16, 640), (1000, 64, 4 * 64 * 7 + 5),
             (4096, 64, 100_000), (16384, 128, 100_000)]
    for n, d, m in cases:
        got = fn(n, d, m)
        require(isinstance(got, tuple) and len(got) == 2,
                f"hbm_accesses({n}, {d}, {m}) should return a tuple (standard, tiled), got {got!r}")
        standard, tiled = reference_hbm_accesses(n, d, m)
        require(all(isinstance(x, int) and not isinstance(x, bool) for x in got),
                f"hbm_accesses({n}, {d}, {m}) should return two ints (counts of elements), got {got!r}; "
                "hint: use // and a ceiling division -(-n // b), not /")
        assert_equal(got[0], standard, name=f"standard count for N={n}, d={d}",
                     hint="Q,K read (2Nd), S written, read (2N^2), P written, read (2N^2), V read and O "
                          "written (2Nd)")
        block = m // (4 * d)
        assert_equal(got[1], tiled, name=f"tiled count for N={n}, d={d}, M={m} (B={block} rows)",
                     hint="B = M // (4d) rows, T = ceil(N / B) query blocks; Q read once, K and V read "
                          "once per query block, O written once, and the N log-sum-exp values written")
    return f"{len(cases)} (N, d, M) triples, N up to 16384"


# --- Exercise 2.2: online softmax ---------------------------------------------------------------------


@check
def online_softmax(fn):
    """``fn(x, block_size)`` is softmax over the last dim, from block-wise running max and sum."""
    require(callable(fn), f"pass your function, got {type(fn).__name__}")
    rising = torch.arange(12, dtype=torch.float32)  # the max changes in every block
    masked = _randn(3, 10, seed=3)
    masked[:, 7:] = float("-inf")  # masked keys after the first block
    masked[1, 4] = float("-inf")
    cases = [
        ("one block", _randn(5, seed=1), 8),
        ("block of 1", _randn(5, seed=2), 1),
        ("max rises block after block", rising, 4),
        ("max rises, ragged last block", rising.flip(0).roll(5), 5),
        ("2-D, ragged", _randn(3, 10, seed=4), 3),
        ("3-D", _randn(2, 3, 17, seed=5), 4),
        ("-inf (masked) entries", masked, 3),
        ("logits around 1e4", _randn(4, 33, seed=6, scale=1e4), 8),
        ("logits around -1e4", _randn(4, 33, seed=7, scale=1e2) - 1e4, 8),
    ]
    for name, x, block in cases:
        want = torch.softmax(x.to(torch.float64), -1)
        got = fn(x.clone(), block)
        assert_tensor(got, f"online_softmax ({name})", shape=x.shape, inputs={"x": x})
        # fp32 in, fp32 out: each probability is exp(x - m) / l with a handful of fp32 roundings,
        # so 1e-6 absolute (probabilities are <= 1) is generous yet far below any real bug.
        assert_close(got, want, atol=1e-6, rtol=1e-5, name=f"online_softmax ({name}, block_size={block})",
                     inputs={"x": x}, hint="when the running max grows from m to m', scale the running sum by "
                     "exp(m - m'); subtract the max before exp (1e4 overflows exp)")
    return f"{len(cases)} cases: ragged blocks, rising maxima, -inf entries, logits of 1e4"


# --- Exercise 2.3: tiled forward in PyTorch ----------------------------------------------------------


@check
def tiled_attention(fn):
    """``fn(q, k, v, causal, block_m, block_n)`` returns (o, lse) equal to standard attention."""
    require(callable(fn), f"pass your function, got {type(fn).__name__}")
    cases = [  # (b, h, n_q, n_k, d, causal, block_m, block_n, dtype, logit scale)
        (1, 1, 4, 4, 2, False, 4, 4, torch.float64, 1.0),
        (1, 1, 20, 20, 8, False, 8, 8, torch.float64, 1.0),
        (1, 1, 20, 20, 8, True, 8, 8, torch.float64, 1.0),
        (1, 2, 13, 29, 16, False, 8, 16, torch.float32, 1.0),
        (2, 1, 29, 13, 16, True, 16, 8, torch.float32, 1.0),
        (1, 1, 37, 37, 32, True, 16, 16, torch.float32, 1.0),
        (1, 1, 24, 24, 16, False, 8, 8, torch.float32, 30.0),  # scores of ~1e4
    ]
    for b, h, n_q, n_k, d, causal, bm, bn, dtype, scale in cases:
        q, k, v = _qkv(b, h, n_q, n_k, d, dtype=dtype, scale=scale)
        label = _case(shape=(b, h, n_q, n_k, d), causal=causal, block_m=bm, block_n=bn, dtype=str(dtype)[6:])
        got = fn(q, k, v, causal=causal, block_m=bm, block_n=bn)
        require(isinstance(got, tuple) and len(got) == 2, f"tiled_attention should return (o, lse), got {type(got)}")
        o, lse = got
        want_o, want_lse = reference_forward(q, k, v, causal)
        # fp32: a few fp32 roundings per step on O(1) values; large logits (~1e4) make lse large,
        # so lse gets a relative tolerance too. fp64 inputs: 1e-10.
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        assert_close(o, want_o, atol=tol, rtol=tol, name=f"o ({label})", inputs={"q": q},
                     hint="rescale the accumulator by exp(m_old - m_new) before adding P_ij V_j, and divide "
                          "by the running sum only at the end" + ("; causal: key j is masked for query i "
                                                                 "when j > i" if causal else ""))
        assert_close(lse, want_lse, atol=tol, rtol=tol, name=f"lse ({label})",
                     hint="lse = m + log(l) per query row (natural log)")
    return f"{len(cases)} cases: ragged blocks, N_q != N_k, causal, scores of ~1e4"


# --- Exercises 2.4 and 2.5: a tiled matmul and a row softmax in Triton -----------------------------
# The checks launch through observation helpers that build the strided views next to the learner's kernel:
# when the grader's judge checks a submission, tensors cross the wire as contiguous arrays, losing strides.

SENTINEL = -12345.0  # fills the buffers around an output: a store without a mask overwrites it


def _block_problem(name: str, value) -> str | None:
    """Why ``value`` cannot be a tl.dot block size (None when it can)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 16 and not value & (value - 1):
        return None
    return (f"{name} must be a power of two >= 16, got {value!r}: the compiler needs tl.arange lengths that are "
            "powers of two and tl.dot tiles of at least 16 per side (Triton's CPU interpreter accepts other sizes; "
            "a GPU build fails with 'arange's range must be a power of 2')")


def launch_matmul(kernel, a, b, *, out=None, block_m=32, block_n=32, block_k=16, num_warps=4, num_stages=2):
    """``C = A @ B`` with ``kernel[(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))](A, B, C, M, N, K, strides..., BLOCK_*)``.

    Any strides (a transposed ``A`` included); ``out`` (optional) receives C, which has A's dtype.
    """
    import triton

    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D torch.Tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if a.dtype != b.dtype or a.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"a and b must share a dtype among float32, float16, bfloat16; got {a.dtype}, {b.dtype}")
    if a.shape[1] != b.shape[0] or a.device != b.device:
        raise ValueError(f"a {tuple(a.shape)} on {a.device} and b {tuple(b.shape)} on {b.device} do not multiply")
    (m, k), n = a.shape, b.shape[1]
    c = torch.empty(m, n, dtype=a.dtype, device=a.device) if out is None else out
    if tuple(c.shape) != (m, n) or c.dtype != a.dtype:
        raise ValueError(f"out must be a {a.dtype} tensor of shape {(m, n)}, got {c.dtype} {tuple(c.shape)}")
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if problem := _block_problem(name, value):
            raise ValueError(problem)
    runtime.require_kernel_device("the tiled matmul kernel", a=a, b=b, out=c)
    kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return c


def launch_row_softmax(kernel, x, *, out=None):
    """Softmax of each row of a 2-D ``x``: ``kernel[(rows,)](X, Y, n_cols, strides..., BLOCK_N)``,
    one program per row, ``BLOCK_N`` the next power of two >= n_cols (the whole row in one tile)."""
    import triton

    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point() or x.dtype == torch.float64:
        raise ValueError(f"x must be a 2-D float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', type(x))}")
    rows, cols = x.shape
    if rows < 1 or not 1 <= cols <= 65536:
        raise ValueError(f"x must have >= 1 row and 1 to 65536 columns (one row per tile), got {tuple(x.shape)}")
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    if y.shape != x.shape or y.dtype != x.dtype:
        raise ValueError(f"out must be a {x.dtype} tensor of shape {tuple(x.shape)}")
    runtime.require_kernel_device("the row-softmax kernel", x=x, out=y)
    block = triton.next_power_of_2(cols)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16  # more threads share a longer row
    kernel[(rows,)](x, y, cols, x.stride(0), x.stride(1), y.stride(0), y.stride(1), BLOCK_N=block, num_warps=warps)
    return y


def _padded(rows, cols, dtype, device, *, room, seed=0, scale=1.0, shift=0.0, fill=float("nan")):
    """(buffer, view): a seeded rows x cols block at the top left of a buffer of at least ``room`` (the
    whole tiles a kernel may touch, so reads and writes past the edges stay inside it) padded with ``fill``."""
    buf = torch.full((max(rows + 1, room[0]), max(cols + 1, room[1])), fill, dtype=torch.float64)
    buf[:rows, :cols] = _randn(rows, cols, dtype=torch.float64, scale=scale, seed=seed) + shift
    buf = buf.to(device, dtype)
    return buf, buf[:rows, :cols]


@observation
def run_matmul(kernel, a_buf, b_buf, c_buf, m, n, k, transpose_a, blocks) -> torch.Tensor:
    """Next to the learner's kernel: A, B, C as views of padded buffers (A^T stored when
    ``transpose_a``), one launch; returns the whole C buffer (padding included)."""
    a = a_buf[:k, :m].t() if transpose_a else a_buf[:m, :k]
    launch_matmul(kernel, a, b_buf[:k, :n], out=c_buf[:m, :n], block_m=blocks[0], block_n=blocks[1],
                  block_k=blocks[2])
    return c_buf


@observation
def run_row_softmax(kernel, x_buf, y_buf, rows, cols, transpose_x) -> torch.Tensor:
    """Next to the learner's kernel: softmax of the rows x cols view of ``x_buf`` (of its transpose's
    top left when ``transpose_x``) into the top left of ``y_buf``; returns the whole ``y_buf``."""
    x = x_buf[:cols, :rows].t() if transpose_x else x_buf[:rows, :cols]
    launch_row_softmax(kernel, x, out=y_buf[:rows, :cols])
    return y_buf


def _require_untouched(buf, rows, cols, what, hint) -> None:
    outside = torch.ones(buf.shape, dtype=torch.bool)
    outside[:rows, :cols] = False
    written = int((buf.detach().cpu()[outside] != torch.tensor(SENTINEL, dtype=buf.dtype)).sum())
    require(written == 0, f"{what}: the kernel wrote {written} element(s) outside the {rows} x {cols} output\n"
            f"  hint: {hint}")


# Matmul tolerance, a bound rather than a guess: with inputs rounded to u_in (TF32 on a GPU for fp32
# inputs unless input_precision="ieee"; 0 when tl.dot multiplies the given values exactly: fp32 in the
# interpreter, fp16/bf16 everywhere) and a float32 accumulator (u = 2^-24), each entry of A B is off by
# at most (2 u_in + K u) sum_k |a_ik b_kj| (first order), plus the rounding of C to its dtype (u_out
# relative). A safety factor of 2 covers second-order terms; max_ij (|A| |B|)_ij gives one atol. Compiled
# fp32 with randn inputs: ~2^-9 * 0.64 K, 0.08 at K = 64 on entries of size ~sqrt(K) = 8, so a zero or
# doubled C (off by its own size) and a skipped K block (off by ~sqrt(BLOCK_K)) fail
# (tests/test_flash_attention.py checks this bound against TF32 emulated on the CPU).
MATMUL_SAFETY = 2


def _matmul_tol(a, b) -> tuple[float, float]:
    fmt = tolerance.dot_format(a.dtype)
    u_in = tolerance.unit_roundoff("tf32") if fmt == "tf32" else 0.0
    u_acc = tolerance.unit_roundoff("float32")
    scale = (a.detach().double().abs() @ b.detach().double().abs()).max().item()
    atol = MATMUL_SAFETY * (2 * u_in + a.shape[1] * u_acc) * scale
    rtol = MATMUL_SAFETY * tolerance.unit_roundoff(str(a.dtype).replace("torch.", ""))
    return atol, rtol


@check
def tiled_matmul(kernel, block_m: int = 32, block_n: int = 32, block_k: int = 16):
    """``kernel`` computes C = A @ B with one program per BLOCK_M x BLOCK_N tile of C (see launch_matmul)."""
    require(hasattr(kernel, "__getitem__"), f"pass your @triton.jit kernel, got {type(kernel).__name__}")
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        require(_block_problem(name, value) is None, _block_problem(name, value))
    f32, f16 = torch.float32, torch.float16
    mine = (block_m, block_n, block_k)
    cases = [  # (M, N, K, dtype, A stored transposed, blocks, hint on what this case adds)
        (16, 16, 16, f32, False, (16, 16, 16), "one tile: offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak"),
        (16, 16, 64, f32, False, (16, 16, 16), "K = 4 * BLOCK_K: add tl.dot(a, b) of every K block into the "
                                               "float32 accumulator (acc += tl.dot(a, b))"),
        (37, 45, 50, f32, False, mine, "ragged M, N, K: load with mask=(rows < M) & (k0 + offs_k < K), "
                                       "other=0.0 (likewise for B), store with mask=(rows < M) & (cols < N)"),
        (40, 24, 70, f32, True, mine, "A is transposed (stride_am = 1): use both strides, never assume the "
                                      "last one is 1"),
        (100, 70, 130, f16, False, (32, 64, 32), "fp16: accumulate in float32, cast to C's dtype when storing"),
        (20, 33, 47, f16, True, (64, 16, 16), "BLOCK_M > M and BLOCK_N < N"),
    ]
    cases += runtime.pick([], [(1000, 777, 1531, f32, False, (128, 128, 32), "a GPU-sized fp32 product"),
                               (2048, 1024, 4096, f16, True, (128, 128, 64), "a GPU-sized fp16 product")])
    if runtime.triton_mode() == "compiled":  # the CPU interpreter computes bf16 tl.dot wrongly
        cases.append((300, 200, 257, torch.bfloat16, False, (64, 64, 32), "bf16"))
    device = runtime.device()
    for m, n, k, dtype, transpose_a, blocks, hint in cases:
        tm, tn, tk = (-(-size // block) * block for size, block in zip((m, n, k), blocks))  # whole tiles
        if transpose_a:
            a_buf, a_t = _padded(k, m, dtype, device, room=(tk, tm), seed=m + k)
            a = a_t.t()
        else:
            a_buf, a = _padded(m, k, dtype, device, room=(tm, tk), seed=m + k)
        b_buf, b = _padded(k, n, dtype, device, room=(tk, tn), seed=n + k + 1)
        c_buf, _ = _padded(m, n, dtype, device, room=(tm + 1, tn + 1), fill=SENTINEL)
        c_buf[:m, :n] = float("nan")  # a tile that is never stored stays NaN
        label = _case(M=m, N=n, K=k, dtype=str(dtype)[6:], A="transposed" if transpose_a else "row-major",
                      BLOCK=blocks)
        got = run_matmul(kernel, a_buf, b_buf, c_buf, m, n, k, transpose_a, blocks)
        assert_tensor(got, f"C buffer ({label})", shape=c_buf.shape)
        atol, rtol = _matmul_tol(a, b)
        assert_close(got[:m, :n], (a.double() @ b.double()).cpu(), atol=atol, rtol=rtol, name=f"C ({label})",
                     hint=hint + "; NaN means a load read past the edge of A or B (padding holds NaN) or a tile "
                                 "of C was never stored")
        _require_untouched(got, m, n, f"C ({label})", "store with mask=(rows < M)[:, None] & (cols < N)[None, :]")
    return f"{len(cases)} products: ragged M, N, K, transposed A, fp32/fp16, BLOCK_M/N/K = {mine} and others"


# Row softmax tolerance, also a bound: in fp32, x - max is exact or rounded once (the error is u |x - m|,
# and only entries with x - m > -~30 matter: e^-30 ~ 1e-13), exp adds a few ulp (a GPU's ex2.approx about
# 2^-22), the sum of n terms is off by at most n u relative, the division by u: rtol = 2 u (32 + n + 8).
# An fp16 or bf16 output adds one rounding (u_out relative); atol covers probabilities that underflow
# (the smallest normal float32 or bfloat16; half the smallest fp16 subnormal). A zero output (off by p >= 1/n)
# and a softmax without max-subtraction (inf / inf = NaN at logits of 1e4) fail.
def _softmax_tol(dtype, n: int) -> tuple[float, float]:
    rtol = 2 * tolerance.unit_roundoff("float32") * (32 + n + 8)
    if dtype == torch.float32:
        return 2.0 ** -126, rtol
    name = str(dtype).replace("torch.", "")
    return (2.0 ** -25 if dtype == torch.float16 else 2.0 ** -126), rtol + 2 * tolerance.unit_roundoff(name)


@check
def row_softmax(kernel):
    """``kernel`` writes softmax of each row of X into Y, one program per row (see launch_row_softmax)."""
    require(hasattr(kernel, "__getitem__"), f"pass your @triton.jit kernel, got {type(kernel).__name__}")
    f32, f16 = torch.float32, torch.float16
    cases = [  # (rows, cols, dtype, logit scale, shift, X stored transposed, hint)
        (1, 1, f32, 1.0, 0.0, False, "a row of one element has softmax 1"),
        (3, 16, f32, 1.0, 0.0, False, "y = exp(x - max(x)) / sum(exp(x - max(x))) over the row's columns"),
        (5, 37, f32, 1.0, -3.0, False, "37 columns in a 64-wide tile: load with mask=cols < n_cols and "
                                       "other=-inf so the padding adds exp(-inf) = 0 to the sum"),
        (7, 50, f32, 1.0, 0.0, True, "X is transposed (stride_xn != 1): address X + row * stride_xm + cols * "
                                     "stride_xn"),
        (4, 33, f32, 1e4, 0.0, False, "logits of 1e4: exp overflows to inf; subtract the row max first"),
        (4, 33, f32, 1.0, -1e4, False, "logits near -1e4: exp underflows to 0 and 0/0 is NaN; subtract the "
                                       "row max first"),
        (6, 100, f16, 1.0, 0.0, False, "fp16: compute in float32 (x.to(tl.float32)), store in Y's dtype"),
        (3, 70, f16, 3e3, 0.0, True, "fp16, transposed, logits of 3e3"),
    ]
    cases += runtime.pick([], [(1024, 3000, f32, 1.0, 0.0, False, "GPU-sized"), (256, 8192, f16, 1.0, 0.0, True,
                                                                                 "GPU-sized fp16")])
    device = runtime.device()
    for rows, cols, dtype, scale, shift, transpose_x, hint in cases:
        tile = 1 << (cols - 1).bit_length()  # BLOCK_N: a kernel may touch that many columns
        kw = {"seed": rows * cols, "scale": scale, "shift": shift}
        if transpose_x:
            x_buf, x_t = _padded(cols, rows, dtype, device, room=(tile, rows), **kw)
            x = x_t.t()
        else:
            x_buf, x = _padded(rows, cols, dtype, device, room=(rows, tile), **kw)
        if cols > 16:
            x[0, 3] = float("-inf")  # a masked entry (as a causal mask makes it)
        y_buf, _ = _padded(rows, cols, dtype, device, room=(rows + 1, tile + 1), fill=SENTINEL)
        y_buf[:rows, :cols] = float("nan")
        label = _case(rows=rows, cols=cols, dtype=str(dtype)[6:], logits=f"{scale:g} * randn + {shift:g}",
                      X="transposed" if transpose_x else "row-major")
        got = run_row_softmax(kernel, x_buf, y_buf, rows, cols, transpose_x)
        assert_tensor(got, f"Y buffer ({label})", shape=y_buf.shape)
        atol, rtol = _softmax_tol(dtype, cols)
        assert_close(got[:rows, :cols], torch.softmax(x.double().cpu(), -1), atol=atol, rtol=rtol,
                     name=f"Y ({label})", hint=hint)
        _require_untouched(got, rows, cols, f"Y ({label})", "store with mask=cols < n_cols")
    return f"{len(cases)} cases: ragged rows, -inf entries, logits of +-1e4, transposed X, fp32/fp16"


# --- Exercise 2.6: Triton forward kernel ------------------------------------------------------------


@check
def triton_forward(kernel):
    """``kernel`` has the forward signature of ``course.flash_attention``; O and lse must match."""
    require(hasattr(kernel, "__getitem__"), f"pass your @triton.jit kernel, got {type(kernel).__name__}")
    cfg = fa.BlockConfig
    f32, f16 = torch.float32, torch.float16
    cases = [  # (b, h, n_q, n_k, d, causal, config, dtype)
        (1, 1, 16, 16, 16, False, cfg(16, 16), f32),
        (1, 1, 40, 40, 16, False, cfg(16, 16), f32),  # ragged: 40 = 2*16 + 8
        (1, 1, 40, 40, 32, True, cfg(16, 16), f32),
        (1, 2, 50, 77, 64, False, cfg(32, 32), f32),  # cross-attention, N_q != N_k
        (2, 1, 77, 50, 64, True, cfg(32, 16), f32),
        (1, 1, 33, 33, 128, True, cfg(16, 32), f32),  # BLOCK_N > BLOCK_M
        (4, 4, 20, 20, 16, True, cfg(16, 16), f32),  # batch*heads = 16
        (1, 2, 45, 45, 64, True, cfg(32, 32), f16),
        (2, 1, 30, 61, 128, False, cfg(32, 32), f16),
    ]
    if runtime.triton_mode() == "compiled":  # the CPU interpreter computes bf16 tl.dot wrongly
        cases.append((1, 2, 45, 61, 128, True, cfg(32, 32), torch.bfloat16))
    device = runtime.device()
    for b, h, n_q, n_k, d, causal, c, dtype in cases:
        q, k, v = _qkv(b, h, n_q, n_k, d, dtype=dtype, device=device)
        label = _case(shape=(b, h, n_q, n_k, d), causal=causal, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
                      dtype=str(dtype)[6:])
        o, lse = fa.launch_forward(kernel, q, k, v, causal=causal, config=c)
        want_o, want_lse = reference_forward(q, k, v, causal)
        tol = {f32: _fp32_tol(max(d, n_k)), f16: FP16_TOL}.get(dtype, BF16_TOL)
        assert_close(o, want_o, atol=tol, rtol=tol, name=f"O ({label})",
                     hint="mask keys >= N_K (ragged tail) with -inf before the row max; load with "
                          "mask=..., other=0.0; causal: keep key j only when j <= query i")
        assert_close(lse, want_lse, atol=tol, rtol=tol, name=f"L ({label})",
                     hint="store L = m_i + log(l_i) (natural log) for rows < N_Q")
    # Causal block skipping: with N_q = 32 and N_k = 96, the query block [0, 32) never needs keys
    # >= 32. They hold NaN: a kernel that loads and masks them still multiplies 0 * NaN = NaN.
    q, k, v = _qkv(1, 1, 32, 96, 32, device=device)
    k[:, :, 32:], v[:, :, 32:] = float("nan"), float("nan")
    o, lse = fa.launch_forward(kernel, q, k, v, causal=True, config=cfg(32, 16))
    want_o, _ = reference_forward(q[..., :32, :], k[..., :32, :], v[..., :32, :], True)
    assert_close(o, want_o, atol=_fp32_tol(32), rtol=_fp32_tol(32), name="O with NaN in never-needed key blocks "
                 "(causal, N_q=32, N_k=96)", hint="when CAUSAL, stop the key loop at min((start_m + 1) * "
                 "BLOCK_M, N_K): later key blocks are fully masked and must not be read at all")
    return f"{len(cases) + 1} cases: ragged N, N_q != N_k, d 16-128, batch*heads 1-16, fp32/fp16, causal skip"


# --- Exercises 2.7-2.9 (gradients) live in flash_attention_grad; notebook 02 calls them from here ----------

from .flash_attention_grad import (  # noqa: E402, F401  (re-exported; after the references it reads)
    _TiledWithBackward,
    autograd_function,
    run_autograd_function,
    tiled_backward,
    triton_backward,
)
