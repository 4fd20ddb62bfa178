"""LoRA (Hu et al., ICLR 2022, arXiv 2106.09685): the fused Triton kernels and the benchmark.

Notebook 03 has the learner build LoRA piece by piece (``LoRALinear``, injection, merging, a
single-adapter fused kernel). This module holds what the notebook *uses* but does not ask the
learner to write, and what ``scripts/bench_lora.py`` runs on a GPU:

* :func:`lora_reference`, :func:`lora_multi_reference`: the unfused PyTorch paths (the baselines);
* :func:`lora_linear`: ``y = x W^T + s (x A^T) B^T`` in one kernel launch;
* :func:`lora_linear_multi`: the serving case, every row of a batch with its own adapter
  (``adapter_ids[m]``; ``-1`` means the base model alone), also one launch;
* :func:`count_matmuls`: how many matrix products a callable runs (merged LoRA runs one);
* :func:`benchmark`: the timing sweep the notebook shows and the GPU script saves as CSV.

Both kernels share one body. In the main loop each tile of ``x`` is loaded once and used twice:
for the base product ``x W^T`` and for the down-projection ``x A^T`` (an extra ``r / BLOCK_N``
of tensor-core work). The up-projection ``(s x A^T) B^T`` is the epilogue, added to the
accumulator before the single store. With several adapters, rows are first grouped by adapter
(as Punica's SGMV does), so a block of rows usually meets one or two adapters; the kernel loops
over the adapters present in its block, masking the rows that belong to others.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

from . import runtime

MAX_RANK = 128  # the down-projection tile x A^T (BLOCK_M x r) lives in registers
RESULTS_CSV = Path(__file__).resolve().parent / "results" / "lora_gpu.csv"  # written by scripts/bench_lora.py


# --- argument validation ----------------------------------------------------------------------


def _require_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_lora_args(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor,
                    lora_B: torch.Tensor, *, kernel: bool = False) -> tuple[int, int, int, int]:
    """Validate one adapter's operands; return ``(M, K, N, r)`` with ``M`` the rows of ``x``.

    ``x`` is ``(..., K)``, ``weight`` ``(N, K)`` (``nn.Linear`` layout), ``lora_A`` ``(r, K)``,
    ``lora_B`` ``(N, r)``; all of one floating dtype and one device. With ``kernel=True`` also
    what the Triton kernels need: fp16/bf16/fp32 (no bf16 in the CPU interpreter), r <= 128.
    """
    for name, t in (("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        _require_tensor(name, t)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., in_features), got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension but weight expects "
                         f"in_features={k} (weight shape {tuple(weight.shape)})")
    if lora_A.dim() != 2 or lora_A.shape[1] != k:
        raise ValueError(f"lora_A must be (r, in_features={k}), got shape {tuple(lora_A.shape)}")
    r = lora_A.shape[0]
    if lora_B.dim() != 2 or tuple(lora_B.shape) != (n, r):
        raise ValueError(f"lora_B must be (out_features={n}, r={r}), got shape {tuple(lora_B.shape)}")
    _check_common(x, weight, lora_A, lora_B, r, kernel)
    m = x.numel() // k if k else 0
    return m, k, n, r


def _check_common(x, weight, lora_A, lora_B, r, kernel: bool) -> None:
    if r < 1:
        raise ValueError(f"the rank r must be >= 1, got {r}")
    if kernel:
        if r > MAX_RANK:
            raise ValueError(f"the rank r must be in [1, {MAX_RANK}] for the fused kernel, got {r}")
        runtime.require_floating_point_dtype("x", x)
    elif not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    for name, t in (("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; cast them to one dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put them on one device")
    if 0 in x.shape or 0 in weight.shape:
        raise ValueError(f"empty operands are not supported: x {tuple(x.shape)}, weight {tuple(weight.shape)}")


def check_multi_lora_args(x: torch.Tensor, weight: torch.Tensor, lora_As: torch.Tensor, lora_Bs: torch.Tensor,
                          adapter_ids: torch.Tensor, *, kernel: bool = False,
                          check_id_values: bool = True) -> tuple[int, int, int, int, int]:
    """Validate a batch of adapters; return ``(M, K, N, r, n_adapters)``.

    ``lora_As`` is ``(n_adapters, r, K)``, ``lora_Bs`` ``(n_adapters, N, r)`` and ``adapter_ids``
    holds one integer per row of ``x`` in ``[-1, n_adapters)`` (``-1``: no adapter).
    """
    for name, t in (("x", x), ("weight", weight), ("lora_As", lora_As), ("lora_Bs", lora_Bs),
                    ("adapter_ids", adapter_ids)):
        _require_tensor(name, t)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must be (..., in_features={k}), got shape {tuple(x.shape)}")
    if lora_As.dim() != 3 or lora_As.shape[2] != k:
        raise ValueError(f"lora_As must be (n_adapters, r, in_features={k}), got shape {tuple(lora_As.shape)}")
    n_adapters, r = lora_As.shape[:2]
    if lora_Bs.dim() != 3 or tuple(lora_Bs.shape) != (n_adapters, n, r):
        raise ValueError(f"lora_Bs must be (n_adapters={n_adapters}, out_features={n}, r={r}), "
                         f"got shape {tuple(lora_Bs.shape)}")
    if n_adapters < 1:
        raise ValueError("lora_As holds no adapter (n_adapters == 0)")
    _check_common(x, weight, lora_As, lora_Bs, r, kernel)
    m = x.numel() // k
    if adapter_ids.dtype not in (torch.int32, torch.int64) or adapter_ids.dim() != 1 or adapter_ids.numel() != m:
        raise ValueError(f"adapter_ids must be a 1-D int32/int64 tensor with one id per row of x ({m} rows), "
                         f"got shape {tuple(adapter_ids.shape)} dtype {adapter_ids.dtype}")
    if adapter_ids.device != x.device:
        raise ValueError(f"adapter_ids is on {adapter_ids.device} but x is on {x.device}")
    if check_id_values and m and (int(adapter_ids.min()) < -1 or int(adapter_ids.max()) >= n_adapters):
        raise ValueError(f"adapter_ids must lie in [-1, {n_adapters}) (-1: no adapter), got values in "
                         f"[{int(adapter_ids.min())}, {int(adapter_ids.max())}]")
    return m, k, n, r, n_adapters


def _scales(scale, n_adapters: int) -> float | list[float]:
    """``scale`` as one float, or as a list of ``n_adapters`` floats (one per adapter)."""
    if isinstance(scale, bool):
        raise TypeError("scale must be a number or one number per adapter, got a bool")
    if isinstance(scale, (int, float)):
        values = [float(scale)]
    else:
        values = torch.as_tensor(scale, dtype=torch.float64).flatten().tolist()
        if len(values) != n_adapters:
            raise ValueError(f"scale must be one number or {n_adapters} numbers (one per adapter), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"scale must be finite, got {values}")
    return values[0] if isinstance(scale, (int, float)) else values


# --- the unfused PyTorch paths (baselines and references) -------------------------------------


def lora_reference(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """The unfused path: ``x W^T + scale * (x A^T) B^T`` as three PyTorch matmuls and an add."""
    check_lora_args(x, weight, lora_A, lora_B)
    return x @ weight.T + scale * ((x @ lora_A.T) @ lora_B.T)


def lora_multi_reference(x: torch.Tensor, weight: torch.Tensor, lora_As: torch.Tensor, lora_Bs: torch.Tensor,
                         adapter_ids: torch.Tensor, scale=1.0) -> torch.Tensor:
    """Unfused multi-adapter path: the base product, then each adapter on the rows that use it."""
    m, k, n, r, n_adapters = check_multi_lora_args(x, weight, lora_As, lora_Bs, adapter_ids)
    scales = _scales(scale, n_adapters)
    scales = scales if isinstance(scales, list) else [scales] * n_adapters
    x2 = x.reshape(m, k)
    y = x2 @ weight.T
    for a in range(n_adapters):
        rows = (adapter_ids == a).nonzero().flatten()
        if rows.numel():
            xa = x2[rows]
            y[rows] += scales[a] * ((xa @ lora_As[a].T) @ lora_Bs[a].T)
    return y.reshape(*x.shape[:-1], n)


# --- the fused kernel -------------------------------------------------------------------------


@triton.jit
def _lora_fused_kernel(x_ptr, w_ptr, a_ptr, b_ptr, ids_ptr, scale_ptr, y_ptr,
                       M, N, K, R, scale, M_BUCKET,
                       stride_xm, stride_xk, stride_wn, stride_wk,
                       stride_aa, stride_ar, stride_ak, stride_ba, stride_bn, stride_br,
                       stride_ym, stride_yn,
                       MULTI: tl.constexpr, PER_ADAPTER_SCALE: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr):
    # M_BUCKET (next power of two of M) is unused here: it is the autotuner's key (see _tuned).
    # Grouped launch order: GROUP_M row blocks share each column block while it sits in L2.
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < M
    col_ok = offs_n < N
    rank_ok = offs_r < R

    if MULTI:
        ids = tl.load(ids_ptr + offs_m, mask=row_ok, other=-1)
        first = tl.min(tl.where(ids >= 0, ids, 1 << 30), axis=0)
        last = tl.max(ids, axis=0)  # first > last when no row of this block has an adapter
    else:
        first = 0
        last = 0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)   # x W^T
    down = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)  # x A^T, the rank-r activations
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
        for adapter in range(first, last + 1):
            a = tl.load(a_ptr + adapter * stride_aa + offs_r[None, :] * stride_ar + ks[:, None] * stride_ak,
                        mask=rank_ok[None, :] & k_ok[:, None], other=0.0)
            xs = x
            if MULTI:
                xs = tl.where((ids == adapter)[:, None], x, 0.0)
            if IEEE:
                down = tl.dot(xs, a, down, input_precision="ieee")
            else:
                down = tl.dot(xs, a, down)

    # Epilogue: acc += (s * x A^T) B^T, one rank-r product per adapter present in the block.
    for adapter in range(first, last + 1):
        if PER_ADAPTER_SCALE:
            scaled = down * tl.load(scale_ptr + adapter)
        else:
            scaled = down * scale
        if MULTI:
            scaled = tl.where((ids == adapter)[:, None], scaled, 0.0)
        b = tl.load(b_ptr + adapter * stride_ba + offs_n[None, :] * stride_bn + offs_r[:, None] * stride_br,
                    mask=col_ok[None, :] & rank_ok[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(scaled.to(b.dtype), b, acc, input_precision="ieee")
        else:
            acc = tl.dot(scaled.to(b.dtype), b, acc)

    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
             acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _gpu_configs() -> list:
    shapes = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): large tiles for prefill, thin for decode
        (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
        (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
        (16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (16, 32, 256, 4, 4), (32, 64, 128, 4, 4), (16, 64, 256, 4, 3),
    ]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in shapes]


# sm_75 (Turing, a free Colab T4): Triton compiles tl.dot there without tensor cores (its matmul pass
# refuses MMA below sm_80 and takes the FMA path; measured: fma.rn.f32, no mma.sync, in the PTX), so
# every operand tile lives in registers and the tiles above spill or, with 3-4 stages, overflow
# sm_75's 64 KiB of shared memory. Small tiles, 2 stages; course/results/kernel_configs_lora_bitnet.csv
# says which compile cleanly there. Disjoint from the list above (2 stages), so a config says its arch.
TURING_SHAPES = [(32, 64, 32, 4, 2), (16, 64, 64, 4, 2)]


def _turing_configs() -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in TURING_SHAPES]


_autotuned = None
CPU_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}  # small tiles: the interpreter is slow
TUNE_KEY = ["M_BUCKET", "N", "K", "R", "MULTI"]
MEASURED_RANKS = (16,)  # BLOCK_R values scripts/compile_lora_bitnet_configs.py compiles (r <= 16)


def m_bucket(m: int) -> int:
    """The autotuner's key for ``m`` rows: the next power of two (1, 2, 4, ..., 4096, 8192, ...).

    Token counts in one bucket share one tuned config, so a new batch or prompt length does not re-tune.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m (rows) must be a positive int, got {m!r}")
    return triton.next_power_of_2(m)


# --- per-arch pruning from measured compiles (shared with course.bitnet) -----------------------

KERNEL_CONFIGS_CSV = Path(__file__).resolve().parent / "results" / "kernel_configs_lora_bitnet.csv"


def config_name(config) -> str:
    """``'BMxBNxBK-wWARPSsSTAGES'``, the config's name in the compile measurements."""
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}-w{config.num_warps}s{config.num_stages}"


@functools.lru_cache(maxsize=1)
def measured_fits() -> dict:
    """``{(kernel, arch, variant, config name): fits}`` from scripts/compile_lora_bitnet_configs.py.

    A config fits an arch when ptxas reported no spill and its shared memory is within the arch's
    per-block limit. Empty when the CSV is missing.
    """
    from . import bench

    if not KERNEL_CONFIGS_CSV.exists():
        return {}
    rows, _ = bench.load_csv(KERNEL_CONFIGS_CSV)
    return {(r["kernel"], int(r["arch"]), str(r["variant"]), r["config"]): bool(r["fits"] in (True, "True"))
            for r in rows}


@functools.lru_cache(maxsize=1)
def measured_compile_errors() -> dict:
    """``{(kernel, arch, variant, config name): error}`` for the measured configs that did not compile."""
    from . import bench

    if not KERNEL_CONFIGS_CSV.exists():
        return {}
    rows, _ = bench.load_csv(KERNEL_CONFIGS_CSV)
    return {(r["kernel"], int(r["arch"]), str(r["variant"]), r["config"]): str(r["error"])
            for r in rows if r.get("error")}


def refuse_if_no_config_compiles(kernel: str, configs: list, variant_of, arch: int | None = None) -> None:
    """Raise a clear error when every config was measured not to compile for ``arch`` (default: this GPU's).

    Pruning cannot help then, and Triton's own message ("PassManager::run failed") does not say why.
    Measured: Triton 3.9 cannot compile an int8 ``tl.dot`` for sm_75 at all (its FMA fallback applies
    a float extension to the int8 operands), so the ternary kernel has no config on a T4.
    """
    arch = device_arch() if arch is None else arch
    errors = measured_compile_errors()
    found = [errors.get((kernel, arch, variant_of(c), config_name(c))) for c in configs]
    if found and all(found):
        raise RuntimeError(f"the {kernel} kernel does not compile for sm_{arch} with Triton {triton.__version__}: "
                           f"all {len(found)} configs failed ({found[0]}; see {KERNEL_CONFIGS_CSV.name}). "
                           "Run it on sm_80 or newer, or on the CPU (the Triton interpreter).")


def device_arch() -> int | None:
    """Compute capability of the current CUDA device as ``10 * major + minor`` (90 on an H100), or None."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def arch_candidates(configs: list, turing: list, arch: int | None = None) -> list:
    """The configs the autotuner may try on ``sm_<arch>`` (default: this GPU's): below sm_80 only those
    named in ``turing`` (Triton's FMA path needs small tiles), at sm_80 and up (or with no GPU) only
    the others. If none of ``configs`` is a candidate for the arch, all of them."""
    arch = device_arch() if arch is None else arch
    pre_ampere = arch is not None and int(arch) < 80
    names = {config_name(c) for c in turing}
    return [c for c in configs if (config_name(c) in names) == pre_ampere] or list(configs)


def configs_measured_fit(kernel: str, configs: list, variant_of, arch: int | None = None) -> list:
    """The configs that compiled for ``arch`` (default: this GPU's) with no spill and shared memory in limit.

    ``variant_of(config)`` names the specialization measured (dtype, rank, masks). A config with no
    measurement for this arch and variant (an arch the script did not compile for, such as sm_86 or
    sm_89, a variant it did not compile, or a new config) is kept: without a measurement the
    autotuner is the judge, and it drops configs that fail to launch. If every measured config
    failed, all are kept rather than none. Which configs are candidates on an arch at all (the
    Turing tiles below sm_80) is :func:`arch_candidates`, applied first by the launchers' pruners.
    """
    arch = device_arch() if arch is None else arch
    fits = measured_fits()
    kept = [c for c in configs if fits.get((kernel, arch, variant_of(c), config_name(c)), True)]
    return kept or list(configs)


# Arguments a measured launch has as multiples of 16 (pointers: 16-byte aligned), as Triton specialises
# them; scripts/compile_lora_bitnet_configs.py compiles with exactly these facts.
ALIGNED_ARGS = {
    "lora": ("x_ptr", "w_ptr", "a_ptr", "b_ptr", "ids_ptr", "scale_ptr", "y_ptr", "N", "K", "stride_xm", "stride_wn",
             "stride_aa", "stride_ar", "stride_ym"),
    "bitnet": ("x_ptr", "xs_ptr", "wp_ptr", "y_ptr", "N", "K", "stride_xm", "stride_ym"),
}


def launch_is_aligned(kernel: str, named_args: dict) -> bool:
    """True when every argument in ``ALIGNED_ARGS[kernel]`` is a multiple of 16 (a tensor: its address)."""
    def divisible(value) -> bool:
        return (value.data_ptr() if isinstance(value, torch.Tensor) else int(value)) % 16 == 0

    return all(divisible(named_args[name]) for name in ALIGNED_ARGS[kernel])


def lora_variant(dtype: torch.dtype, multi: bool, block_r: int, aligned: bool) -> str:
    """The measured specialization that stands for a launch: smallest measured BLOCK_R >= block_r.

    Registers grow with the rank tile, so a launch is judged by a measurement at its rank tile or a
    larger one; above the largest measured rank tile there is none (``'r>16'``: every config kept),
    nor for launches whose operands are not aligned (``'unaligned'``).
    """
    name = str(dtype).removeprefix("torch.")
    measured = [r for r in MEASURED_RANKS if r >= block_r]
    rank = f"r={measured[0]}" if measured else f"r>{MEASURED_RANKS[-1]}"
    return f"{name},multi={bool(multi)},{rank},{'aligned' if aligned else 'unaligned'}"


def _prune(configs, named_args, **kwargs):
    """Per-arch pruning: keep what was measured to compile without spills on this GPU (see above)."""
    variant = lora_variant(named_args["x_ptr"].dtype, kwargs["MULTI"], kwargs["BLOCK_R"],
                           launch_is_aligned("lora", named_args))
    return configs_measured_fit("lora", arch_candidates(configs, _turing_configs()), lambda c: variant)


def _tuned():
    """The autotuned kernel, built on first use: keyed on M's bucket, pruned per arch (sm_75: its own tiles)."""
    global _autotuned
    if _autotuned is None:
        _autotuned = triton.autotune(_gpu_configs() + _turing_configs(), key=TUNE_KEY,
                                     prune_configs_by={"early_config_prune": _prune})(_lora_fused_kernel)
    return _autotuned


def _launch(x2, weight, As, Bs, ids, scale, multi: bool) -> torch.Tensor:
    """One launch of the fused kernel; ``scale`` is a float, or a list with one float per adapter."""
    runtime.require_kernel_device("the fused LoRA kernel", x=x2, weight=weight, lora_A=As, lora_B=Bs,
                                  adapter_ids=ids)
    m, k = x2.shape
    n = weight.shape[0]
    r = As.shape[1]
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    per_adapter = isinstance(scale, list)
    scale_arg = torch.tensor(scale, dtype=torch.float32, device=x2.device) if per_adapter else x2  # x2: unused
    args = (x2, weight, As, Bs, ids, scale_arg, y, m, n, k, r, 1.0 if per_adapter else float(scale), m_bucket(m),
            x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
            As.stride(0), As.stride(1), As.stride(2), Bs.stride(0), Bs.stride(1), Bs.stride(2),
            y.stride(0), y.stride(1))
    meta = {"MULTI": multi, "PER_ADAPTER_SCALE": per_adapter, "IEEE": x2.dtype == torch.float32,
            "BLOCK_R": max(16, triton.next_power_of_2(r))}
    if runtime.triton_mode() == "compiled":  # operands are on the GPU (checked above)
        def grid(cfg):
            return (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)

        _tuned()[grid](*args, **meta)
    else:
        grid = (triton.cdiv(m, CPU_BLOCKS["BLOCK_M"]) * triton.cdiv(n, CPU_BLOCKS["BLOCK_N"]),)
        _lora_fused_kernel[grid](*args, **meta, **CPU_BLOCKS)
    return y


def lora_linear(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                scale: float) -> torch.Tensor:
    """``x W^T + scale * (x A^T) B^T`` in one fused Triton launch; ``x`` is ``(..., in_features)``.

    fp16/fp32 everywhere, bf16 on a GPU (the CPU interpreter computes bf16 ``tl.dot`` wrongly).
    Accumulates in fp32; the rank-r activations are rounded to the input dtype before the
    up-projection, as the unfused path rounds them.
    """
    m, k, n, r = check_lora_args(x, weight, lora_A, lora_B, kernel=True)
    x2 = x.reshape(m, k)
    # the adapter-id pointer is unused by the single-adapter kernel: pass x2 in its place
    y = _launch(x2, weight, lora_A[None], lora_B[None], x2, float(_scales(scale, 1)), multi=False)
    return y.reshape(*x.shape[:-1], n)


def lora_linear_multi(x: torch.Tensor, weight: torch.Tensor, lora_As: torch.Tensor, lora_Bs: torch.Tensor,
                      adapter_ids: torch.Tensor, scale=1.0, *, group_rows: bool = True,
                      validate_ids: bool = True) -> torch.Tensor:
    """Every row ``m`` of ``x`` gets ``x_m W^T + s_a (x_m A_a^T) B_a^T`` with ``a = adapter_ids[m]``.

    ``adapter_ids[m] == -1`` gives the base model alone. ``scale`` is one number or one per adapter.
    With ``group_rows`` (the default) rows are sorted by adapter before the launch and the output
    is put back in order, so that most row blocks meet a single adapter. ``validate_ids=False``
    skips the range check of the ids, which reads them back to the host (a GPU sync): for callers
    that validated them already, such as a server or the benchmark.
    """
    m, k, n, r, n_adapters = check_multi_lora_args(x, weight, lora_As, lora_Bs, adapter_ids, kernel=True,
                                                   check_id_values=validate_ids)
    scales = _scales(scale, n_adapters)
    x2 = x.reshape(m, k)
    ids = adapter_ids.to(torch.int32)
    order = None
    if group_rows and m > 16:
        order = torch.argsort(ids, stable=True)
        x2, ids = x2[order], ids[order]
    y = _launch(x2, weight, lora_As, lora_Bs, ids.contiguous(), scales, multi=True)
    if order is not None:
        y = torch.empty_like(y).index_copy_(0, order, y)
    return y.reshape(*x.shape[:-1], n)


# --- counting matrix products -----------------------------------------------------------------

_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_addmm_activation"}


def count_matmuls(fn: Callable[[], object]) -> int:
    """How many matrix-product ATen calls ``fn()`` makes (``mm``, ``addmm``, ``bmm``, ...).

    A deterministic stand-in for "added latency": a merged LoRA layer runs exactly the base
    layer's one product, an unmerged one runs three.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable with no arguments, got {type(fn).__name__}")
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in _MATMUL_OPS:
                self.count += 1
            return func(*args, **(kwargs or {}))

    counter = _Counter()
    with counter, torch.no_grad():
        fn()
    return counter.count


# --- the benchmark (the notebook's table and scripts/bench_lora.py) ---------------------------


def make_problem(tokens: int, d: int, r: int, *, n_adapters: int = 1, dtype=torch.float32, device=None,
                 seed: int = 0) -> dict:
    """Random operands at a realistic scale: ``x (tokens, d)``, ``W (d, d)``, adapters, ids."""
    for name, v in (("tokens", tokens), ("d", d), ("r", r), ("n_adapters", n_adapters)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    device = torch.device(device) if device is not None else runtime.device()
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, std):
        return (torch.randn(*shape, generator=gen) * std).to(device=device, dtype=dtype)

    return {
        "x": rand(tokens, d, std=1.0),
        "weight": rand(d, d, std=d ** -0.5),
        "lora_As": rand(n_adapters, r, d, std=d ** -0.5),
        "lora_Bs": rand(n_adapters, d, r, std=r ** -0.5),
        "adapter_ids": torch.arange(tokens, device=device) % n_adapters,
        "scale": 2.0,
    }


def benchmark(tokens: Sequence[int], *, d: int, r: int, n_adapters: int = 8, dtype=torch.float32,
              include_triton: bool | None = None, warmup: int = 2, repeats: int = 10) -> list[dict]:
    """Time the LoRA forward paths at each token count; return tidy rows.

    Rows (``name``, ``tokens``, ``ms``, ``p20_ms``, ``p80_ms``): ``base`` (x W^T alone: cuBLAS on a
    GPU), ``unfused`` (three matmuls and an add), ``merged`` (W + sBA precomputed: one matmul),
    and, when ``include_triton`` (default: on a GPU with Triton, where kernels compile), ``fused`` (one
    adapter), ``fused_multi_1`` and ``fused_multi_{n}`` (a batch whose rows cycle through
    ``n_adapters`` adapters) and ``unfused_multi_{n}``. Timing an interpreted kernel on a CPU
    measures Python, not the kernel, so the CPU table leaves the Triton rows out.
    """
    from . import bench

    if include_triton is None:
        include_triton = runtime.on_gpu() and runtime.triton_available()
    rows = []
    for t in tokens:
        for name, fn, device in _benchmark_paths(t, d, r, n_adapters, dtype, include_triton):
            timing = bench.time_fn(fn, warmup=warmup, repeats=repeats, device=device)
            rows.append({"name": name, "tokens": t, "d": d, "r": r, "dtype": str(dtype).replace("torch.", ""),
                         "ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms})
    return rows


def _benchmark_paths(t, d, r, n_adapters, dtype, include_triton):
    """``(name, callable, device)`` for every path at ``t`` tokens (operands live until the generator ends)."""
    p = make_problem(t, d, r, n_adapters=n_adapters, dtype=dtype)
    x, w, s = p["x"], p["weight"], p["scale"]
    a, b, As, Bs, ids = p["lora_As"][0], p["lora_Bs"][0], p["lora_As"], p["lora_Bs"], p["adapter_ids"]
    merged = w + s * (b @ a)
    one = torch.zeros(t, dtype=torch.int64, device=x.device)
    fns: dict[str, Callable[[], object]] = {
        "base": lambda: x @ w.T,
        "unfused": lambda: x @ w.T + s * ((x @ a.T) @ b.T),
        "merged": lambda: x @ merged.T,
    }
    if include_triton:
        fns["fused"] = lambda: lora_linear(x, w, a, b, s)
        fns["fused_multi_1"] = lambda: lora_linear_multi(x, w, As[:1], Bs[:1], one, s, validate_ids=False)
        fns[f"fused_multi_{n_adapters}"] = lambda: lora_linear_multi(x, w, As, Bs, ids, s, validate_ids=False)
        fns[f"unfused_multi_{n_adapters}"] = lambda: lora_multi_reference(x, w, As, Bs, ids, s)
    for name, fn in fns.items():
        yield name, fn, x.device


def performance_bars(rows: list[dict], *, prefill: int = 8192, decode: int = 16, n_adapters: int = 8) -> list[dict]:
    """The issue's three bars, computed from benchmark rows (bf16, d = 4096, r = 16 on a GPU).

    * prefill: fused time / base (cuBLAS ``x W^T``) time at ``prefill`` tokens, target <= 1.10;
    * decode: unfused time / fused time at ``decode`` tokens, target >= 1.3;
    * adapters: ``fused_multi_{n}`` time / ``fused_multi_1`` time at each token count, target <= 1.5.
    Bars whose rows are missing are left out.
    """
    ms = {(r["name"], int(r["tokens"])): float(r["ms"]) for r in rows}
    bars = []

    def add(bar, num, den, tokens, target, better):
        if num in ms and den in ms:
            value = ms[num] / ms[den]
            bars.append({"bar": bar, "tokens": tokens, "ratio": value, "target": target,
                         "met": value <= target if better == "lower" else value >= target})

    add("fused / base (cuBLAS)", ("fused", prefill), ("base", prefill), prefill, 1.10, "lower")
    add("unfused / fused", ("unfused", decode), ("fused", decode), decode, 1.3, "higher")
    for t in sorted({int(r["tokens"]) for r in rows}):
        add(f"{n_adapters} adapters / 1 adapter", (f"fused_multi_{n_adapters}", t), ("fused_multi_1", t), t, 1.5,
            "lower")
    return bars
