"""BitNet (Wang et al., arXiv 2310.11453) and BitNet b1.58 (Ma et al., arXiv 2402.17764): packing and kernels.

Notebook 04 has the learner write the quantizers, ``BitLinear``, the packing and a packed
ternary matmul kernel. This module holds the reference versions the notebook's checks compare
against and that ``scripts/bench_bitnet.py`` runs on a GPU:

* :func:`quantize_activations`: absmax int8, one scale per row (per token);
* :func:`ternarize`: absmean ternary weights {-1, 0, +1} and their scale (b1.58);
* :func:`pack_ternary` / :func:`unpack_ternary`: 2-bit codes, 16 weights per int32;
* :func:`pack_base3` / :func:`unpack_base3`: 5 trits per byte (1.6 bits per weight);
* :func:`ternary_matmul`: int8 activations times packed ternary weights in one Triton kernel that
  unpacks the weights in registers and accumulates in int32, then scales back to float32;
* :func:`ternary_matmul_reference`: the same result computed by PyTorch, bit for bit;
* :func:`benchmark`: decode-shaped timing of the kernel against ``torch.matmul`` in bf16.

Packed layout (the notebook's exercise uses the same): weight row ``n`` is packed along the
input dimension; word ``w = packed[n, j]`` holds ``W[n, 16 j + i]`` for ``i = 0..15`` in bits
``2i, 2i+1`` as the code ``W + 1`` (0 for -1, 1 for 0, 2 for +1). Missing weights at the end of a
row (``K`` not a multiple of 16) are packed as code 1, a zero weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import triton
import triton.language as tl

from . import runtime
from .lora import (arch_candidates, configs_measured_fit, launch_is_aligned, m_bucket,  # shared with the LoRA
                   refuse_if_no_config_compiles)  # kernel: one rule for both

PER_WORD = 16  # 2-bit codes per int32
PER_BYTE = 5  # trits per byte in base-3 packing: 3**5 = 243 <= 256
QMAX = 127  # int8 activations use the symmetric range [-127, 127]
RESULTS_CSV = Path(__file__).resolve().parent / "results" / "bitnet_gpu.csv"  # written by scripts/bench_bitnet.py

# Energy per operation in pJ, (ADD, MUL), as tabulated in the BitNet paper (Table 2); the 45 nm column
# is Horowitz, "Computing's energy problem", ISSCC 2014.
ENERGY_PJ = {
    "45nm": {"fp32": (0.9, 3.7), "fp16": (0.4, 1.1), "int8": (0.03, 0.2)},
    "7nm": {"fp32": (0.38, 1.31), "fp16": (0.16, 0.34), "int8": (0.007, 0.07)},
}


# --- quantizers (references for the notebook's exercises) ------------------------------------


def quantize_activations(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """absmax int8 per row: ``codes = round(x * 127 / max|x_row|)``; returns ``(codes, step)``.

    ``step`` has shape ``(..., 1)`` in float32 and ``x ~= codes * step``. ``eps`` keeps an all-zero
    row from dividing by zero (its codes are 0).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be (..., features) with features >= 1, got shape {tuple(x.shape)}")
    gamma = x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    step = gamma / QMAX
    codes = (x.float() / step).round().clamp(-QMAX, QMAX).to(torch.int8)
    return codes, step


def ternarize(w: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """absmean ternary weights (BitNet b1.58): ``RoundClip(W / (mean|W| + eps), -1, 1)``, ``mean|W|``.

    Returns int8 codes in {-1, 0, +1} and the float32 scale ``beta`` with ``W ~= codes * beta``.
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {type(w).__name__} {getattr(w, 'dtype', '')}")
    if w.numel() == 0:
        raise ValueError("w is empty")
    beta = w.detach().float().abs().mean()
    codes = (w.float() / (beta + eps)).round().clamp(-1, 1).to(torch.int8)
    return codes, beta


# --- packing -----------------------------------------------------------------------------------


def _check_ternary(name: str, w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.is_floating_point() or w.is_complex() or w.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers in {{-1, 0, 1}} (e.g. int8), got dtype {w.dtype}")
    if w.dim() < 1 or w.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(w.shape)}")
    if w.numel() and (int(w.min()) < -1 or int(w.max()) > 1):
        raise ValueError(f"{name} must hold values in {{-1, 0, 1}}, got values in [{int(w.min())}, {int(w.max())}]")


def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Pack ternary weights ``(..., K)`` into int32 words ``(..., ceil(K / 16))``, 2 bits each."""
    _check_ternary("w", w)
    k = w.shape[-1]
    words = -(-k // PER_WORD)
    codes = torch.ones(*w.shape[:-1], words * PER_WORD, dtype=torch.int64, device=w.device)  # pad: zero weights
    codes[..., :k] = w.to(torch.int64) + 1
    codes = codes.reshape(*w.shape[:-1], words, PER_WORD)
    shifts = 2 * torch.arange(PER_WORD, device=w.device, dtype=torch.int64)
    packed = (codes << shifts).sum(dim=-1)  # < 2**32, held in int64
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # same bits as uint32


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: int32 words ``(..., W)`` to int8 weights ``(..., k)``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32:
        raise TypeError(f"packed must be an int32 tensor, got {type(packed).__name__} {getattr(packed, 'dtype', '')}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (weights per row) must be a positive int, got {k!r}")
    if packed.dim() < 1 or packed.shape[-1] != -(-k // PER_WORD):
        raise ValueError(f"k={k} needs {-(-k // PER_WORD)} words per row, packed has shape {tuple(packed.shape)}")
    shifts = 2 * torch.arange(PER_WORD, device=packed.device, dtype=torch.int32)
    codes = (packed[..., None] >> shifts) & 3  # arithmetic shift, then mask: the sign bits go away
    if (codes == 3).any():
        raise ValueError("packed holds the code 3, which no ternary weight packs to: not made by pack_ternary")
    return (codes.reshape(*packed.shape[:-1], -1)[..., :k] - 1).to(torch.int8)


def pack_base3(w: torch.Tensor) -> torch.Tensor:
    """Pack ternary weights, flattened, 5 per byte: ``byte = sum_i (w_i + 1) 3**i`` (1.6 bits a weight)."""
    _check_ternary("w", w)
    flat = w.reshape(-1).to(torch.int64) + 1
    n = flat.numel()
    groups = -(-n // PER_BYTE)
    codes = torch.ones(groups * PER_BYTE, dtype=torch.int64, device=w.device)
    codes[:n] = flat
    powers = 3 ** torch.arange(PER_BYTE, device=w.device, dtype=torch.int64)
    return (codes.reshape(groups, PER_BYTE) * powers).sum(dim=-1).to(torch.uint8)


def unpack_base3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_base3`: uint8 bytes to ``n`` int8 weights (flat)."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"packed must be a 1-D uint8 tensor, got {type(packed).__name__} "
                        f"{getattr(packed, 'dtype', '')} {tuple(getattr(packed, 'shape', ()))}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of weights) must be a positive int, got {n!r}")
    if packed.numel() != -(-n // PER_BYTE):
        raise ValueError(f"n={n} weights need {-(-n // PER_BYTE)} bytes, got {packed.numel()}")
    if packed.numel() and int(packed.max()) >= 3 ** PER_BYTE:
        raise ValueError(f"byte values must be < 243 (five trits), got {int(packed.max())}")
    value = packed.to(torch.int64)
    trits = []
    for _ in range(PER_BYTE):
        trits.append(value % 3)
        value = value // 3
    return (torch.stack(trits, dim=-1).reshape(-1)[:n] - 1).to(torch.int8)


# --- the packed ternary matmul -----------------------------------------------------------------


def check_ternary_matmul_args(x_codes: torch.Tensor, x_step: torch.Tensor, w_packed: torch.Tensor,
                              w_scale, k: int) -> tuple[int, int]:
    """Validate the kernel's operands; return ``(M, N)``.

    ``x_codes`` int8 ``(M, k)``, ``x_step`` float32 ``(M,)`` or ``(M, 1)``, ``w_packed`` int32
    ``(N, ceil(k / 16))``, ``w_scale`` a float or a one-element float32 tensor.
    """
    for name, t in (("x_codes", x_codes), ("x_step", x_step), ("w_packed", w_packed)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x_codes.dtype != torch.int8:
        raise TypeError(f"x_codes must be int8 (quantize activations first), got {x_codes.dtype}")
    if w_packed.dtype != torch.int32:
        raise TypeError(f"w_packed must be int32 words from pack_ternary, got {w_packed.dtype}")
    if x_codes.dim() != 2:
        raise ValueError(f"x_codes must be 2-D (M, K), got shape {tuple(x_codes.shape)}")
    m = x_codes.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or k != x_codes.shape[1]:
        raise ValueError(f"k must equal x_codes.shape[1]={x_codes.shape[1]}, got {k!r}")
    if w_packed.dim() != 2 or w_packed.shape[1] != -(-k // PER_WORD):
        raise ValueError(f"w_packed must be (N, ceil(K/16)) = (N, {-(-k // PER_WORD)}) for K={k}, "
                         f"got shape {tuple(w_packed.shape)}")
    if m == 0 or w_packed.shape[0] == 0:
        raise ValueError(f"empty operands are not supported: M={m}, N={w_packed.shape[0]}")
    if x_step.dtype != torch.float32 or x_step.numel() != m:
        raise ValueError(f"x_step must be float32 with one value per row ({m}), got shape "
                         f"{tuple(x_step.shape)} dtype {x_step.dtype}")
    if isinstance(w_scale, torch.Tensor):
        if w_scale.numel() != 1 or w_scale.dtype != torch.float32:
            raise ValueError(f"w_scale must be one float32 value, got shape {tuple(w_scale.shape)} {w_scale.dtype}")
    elif isinstance(w_scale, bool) or not isinstance(w_scale, (int, float)):
        raise TypeError(f"w_scale must be a float or a one-element tensor, got {type(w_scale).__name__}")
    devices = {t.device for t in (x_codes, x_step, w_packed)}
    if len(devices) != 1:
        raise ValueError(f"x_codes, x_step and w_packed must be on one device, got {sorted(map(str, devices))}")
    return m, w_packed.shape[0]


def ternary_matmul_reference(x_codes: torch.Tensor, x_step: torch.Tensor, w_packed: torch.Tensor, w_scale,
                             k: int) -> torch.Tensor:
    """``(x_codes @ W^T) * x_step * w_scale`` in float32 with an exact integer product."""
    m, n = check_ternary_matmul_args(x_codes, x_step, w_packed, w_scale, k)
    w = unpack_ternary(w_packed, k)
    # |x_codes @ W^T| <= 127 k < 2**53: float64 holds the integer product exactly on any device.
    acc = (x_codes.double() @ w.double().T).to(torch.int32)
    scale = torch.as_tensor(w_scale, dtype=torch.float32, device=x_codes.device).reshape(())
    return acc.to(torch.float32) * x_step.reshape(m, 1) * scale


@triton.jit
def _ternary_matmul_kernel(x_ptr, xs_ptr, wp_ptr, y_ptr, w_scale, M, N, K, M_BUCKET,
                           stride_xm, stride_xk, stride_wn, stride_ww, stride_ym, stride_yn,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           EVEN_K: tl.constexpr):
    # M_BUCKET (next power of two of M) is not used here: it is the autotuner's key, so that every
    # token count in one bucket reuses one tuned config instead of re-tuning.
    pid_n = tl.program_id(0)  # output columns first: decode has one row block and many column blocks
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_j = tl.arange(0, BLOCK_K // 16)  # the packed words of one K-tile
    shifts = tl.arange(0, 16) * 2  # field i of a word sits in bits 2i, 2i + 1
    row_ok = offs_m < M
    col_ok = offs_n < N
    words_per_row = tl.cdiv(K, 16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        js = k0 // 16 + offs_j
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + ks[None, :] * stride_xk
        # Words as a (BLOCK_K / 16, BLOCK_N) tile: each word loaded once, 2 bits per weight; a row's words
        # are contiguous, so consecutive threads read consecutive words (16-byte vector loads when aligned).
        w_ptrs = wp_ptr + offs_n[None, :] * stride_wn + js[:, None] * stride_ww
        if EVEN_K:  # K a multiple of BLOCK_K: no mask along K, which keeps the loads vectorized
            x = tl.load(x_ptrs, mask=row_ok[:, None], other=0)
            words = tl.load(w_ptrs, mask=col_ok[None, :], other=0)
        else:
            x = tl.load(x_ptrs, mask=row_ok[:, None] & (ks < K)[None, :], other=0)
            words = tl.load(w_ptrs, mask=col_ok[None, :] & (js < words_per_row)[:, None], other=0)
        # Unpack in registers: (J, N) words against 16 shifts -> (J, 16, N) fields; the row-major reshape
        # puts field i of word j at k = 16 j + i, the weight's own index. Code - 1 is the weight.
        fields = (words[:, None, :] >> shifts[None, :, None]) & 3
        w = (tl.reshape(fields, (BLOCK_K, BLOCK_N)) - 1).to(tl.int8)
        acc = tl.dot(x, w, acc)  # int8 x int8 -> int32: exact; masked-off k have x = 0
    xs = tl.load(xs_ptr + offs_m, mask=row_ok, other=0.0)
    y = acc.to(tl.float32) * xs[:, None] * w_scale  # w_scale arrives as a float32 scalar argument
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, y,
             mask=row_ok[:, None] & col_ok[None, :])


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). BLOCK_K is a power of two >= 32 (a compiled int8 tl.dot
# needs K >= 32 per step); BLOCK_M 16 for decode (M of 1 to 16 rows), larger tiles for prefill.
# Which of them fit (no spills, shared memory in limit) differs by arch: course/results/
# kernel_configs_lora_bitnet.csv (scripts/compile_lora_bitnet_configs.py), read by _prune.
GPU_SHAPES = [(16, 32, 256, 4, 4), (16, 64, 256, 4, 4), (16, 128, 256, 4, 3), (16, 64, 512, 4, 3),
              (16, 128, 128, 4, 4), (16, 256, 128, 8, 3), (16, 32, 512, 4, 3), (32, 64, 256, 4, 4),
              (64, 128, 64, 4, 3), (128, 64, 64, 8, 3), (128, 128, 64, 8, 3)]


def _gpu_configs() -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in GPU_SHAPES]


# sm_75 (Turing, a free Colab T4): Triton compiles tl.dot below sm_80 on the FMA path (no int8 mma;
# see course.lora.TURING_SHAPES), so it gets small tiles with 2 stages, disjoint from the list above.
TURING_SHAPES = [(16, 64, 128, 4, 2), (32, 64, 64, 4, 2)]


def _turing_configs() -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in TURING_SHAPES]


def bitnet_variant(even_k: bool, aligned: bool) -> str:
    """The specialization a measurement stands for: K a multiple of BLOCK_K or not; operands aligned or not."""
    return f"even_k={bool(even_k)},{'aligned' if aligned else 'unaligned'}"


def _prune(configs, named_args, **kwargs):
    """Keep the configs measured to compile without spills and within shared memory on this GPU."""
    k, aligned = named_args["K"], launch_is_aligned("bitnet", named_args)
    configs = arch_candidates(configs, _turing_configs())

    def variant_of(c):
        return bitnet_variant(k % c.kwargs["BLOCK_K"] == 0, aligned)

    refuse_if_no_config_compiles("bitnet", configs, variant_of)  # sm_75: no int8 tl.dot in Triton 3.9
    return configs_measured_fit("bitnet", configs, variant_of)


_autotuned = None
CPU_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}


def ternary_matmul(x_codes: torch.Tensor, x_step: torch.Tensor, w_packed: torch.Tensor, w_scale,
                   k: int) -> torch.Tensor:
    """``y = (x_codes @ W^T) * x_step * w_scale`` (float32, ``(M, N)``) from packed ternary ``W``.

    One Triton launch: int8 activations, each packed int32 word loaded once and unpacked into 16
    weights in registers, int32 accumulation, one float multiply per output to scale back.
    Bit-exact against :func:`ternary_matmul_reference`.
    """
    m, n = check_ternary_matmul_args(x_codes, x_step, w_packed, w_scale, k)
    runtime.require_kernel_device("the ternary matmul kernel", x_codes=x_codes, x_step=x_step, w_packed=w_packed)
    ws = float(w_scale)  # a kernel argument, not a device tensor: no host-to-device copy per call
    xs = x_step.reshape(m).contiguous()
    y = torch.empty((m, n), dtype=torch.float32, device=x_codes.device)
    args = (x_codes, xs, w_packed, y, ws, m, n, k, m_bucket(m), x_codes.stride(0), x_codes.stride(1),
            w_packed.stride(0), w_packed.stride(1), y.stride(0), y.stride(1))
    if runtime.triton_mode() == "compiled":  # operands are on the GPU (checked above)
        _tuned()[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))](*args)
    else:
        grid = (triton.cdiv(n, CPU_BLOCKS["BLOCK_N"]), triton.cdiv(m, CPU_BLOCKS["BLOCK_M"]))
        _ternary_matmul_kernel[grid](*args, **CPU_BLOCKS, EVEN_K=k % CPU_BLOCKS["BLOCK_K"] == 0)
    return y


TUNE_KEY = ["M_BUCKET", "N", "K"]


def _tuned():
    """The autotuned kernel (built on first use): keyed on M's bucket, EVEN_K set per config."""
    global _autotuned
    if _autotuned is None:
        even_k = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})(_ternary_matmul_kernel)
        _autotuned = triton.autotune(_gpu_configs() + _turing_configs(), key=TUNE_KEY,
                                     prune_configs_by={"early_config_prune": _prune})(even_k)
    return _autotuned


# --- bytes and the benchmark -------------------------------------------------------------------


def weight_bytes(n_weights: int, format: str) -> float:
    """Bytes to store ``n_weights`` weights: ``fp32``, ``fp16``/``bf16``, ``int8``, ``2bit``, ``base3``, ``1bit``."""
    per_weight = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "2bit": 0.25, "base3": 1 / PER_BYTE,
                  "1bit": 0.125}
    if format not in per_weight:
        raise ValueError(f"format must be one of {sorted(per_weight)}, got {format!r}")
    if isinstance(n_weights, bool) or not isinstance(n_weights, int) or n_weights < 0:
        raise ValueError(f"n_weights must be an int >= 0, got {n_weights!r}")
    return n_weights * per_weight[format]


def make_problem(batch: int, n: int, k: int, *, device=None, seed: int = 0) -> dict:
    """Random activations ``(batch, k)`` and ternary weights ``(n, k)``, ready for both paths."""
    for name, v in (("batch", batch), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    device = torch.device(device) if device is not None else runtime.device()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, k, generator=gen)
    w = torch.randn(n, k, generator=gen) * k ** -0.5
    w_codes, w_scale = ternarize(w)
    x_codes, x_step = quantize_activations(x)
    return {"x": x.to(device), "w": w.to(device), "x_codes": x_codes.to(device), "x_step": x_step.to(device),
            "w_packed": pack_ternary(w_codes).to(device), "w_scale": float(w_scale), "k": k}


def benchmark(batches: Sequence[int], sizes: Sequence[int], *, dtype=torch.bfloat16, warmup: int = 5,
              repeats: int = 50) -> list[dict]:
    """Decode-shaped timing: ``y = x W^T`` for square ``W`` of each size, at each batch.

    Rows: ``torch_matmul`` (``x @ W^T`` in ``dtype``, cuBLAS on a GPU), ``ternary_kernel`` (the
    packed kernel on ready int8 activations) and ``quantize+kernel`` (absmax quantization of ``x``
    in PyTorch, then the kernel), with the weight bytes each reads. Only meaningful on a GPU: on a
    CPU the kernel runs in the Triton interpreter.
    """
    from . import bench

    rows = []
    for size in sizes:
        for batch in batches:
            for name, fn, nbytes, device in _benchmark_paths(batch, size, dtype):
                timing = bench.time_fn(fn, warmup=warmup, repeats=repeats, device=device)
                rows.append({"name": name, "batch": batch, "size": size, "weight_bytes": nbytes,
                             "ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
                             "weight_GBps": nbytes / (timing.median_ms * 1e-3) / 1e9})
    return rows


def _benchmark_paths(batch, size, dtype):
    """``(name, callable, weight bytes read, device)`` for each path at one shape."""
    p = make_problem(batch, size, size)
    x16, w16 = p["x"].to(dtype), p["w"].to(dtype)
    x, x_codes, x_step, w_packed, w_scale, k = p["x"], p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], p["k"]
    packed_bytes = w_packed.numel() * w_packed.element_size()
    yield "torch_matmul", lambda: x16 @ w16.T, w16.numel() * w16.element_size(), x.device
    yield "ternary_kernel", lambda: ternary_matmul(x_codes, x_step, w_packed, w_scale, k), packed_bytes, x.device
    yield ("quantize+kernel", lambda: ternary_matmul(*quantize_activations(x), w_packed, w_scale, k), packed_bytes,
           x.device)


def speedups(rows: list[dict]) -> list[dict]:
    """Per (size, batch): ``torch_matmul`` time over ``ternary_kernel`` and ``quantize+kernel`` times.

    The issue's bar is ``kernel speed-up >= 3`` at batch 1 and size 16384.
    """
    ms = {(r["name"], int(r["size"]), int(r["batch"])): float(r["ms"]) for r in rows}
    out = []
    for size, batch in sorted({(int(r["size"]), int(r["batch"])) for r in rows}):
        base = ms.get(("torch_matmul", size, batch))
        kernel = ms.get(("ternary_kernel", size, batch))
        both = ms.get(("quantize+kernel", size, batch))
        if base and kernel:
            out.append({"size": size, "batch": batch, "torch_ms": base, "kernel_ms": kernel,
                        "speedup": base / kernel, "speedup_with_quantize": base / both if both else float("nan")})
    return out
