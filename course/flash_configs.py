"""Block sizes of the FlashAttention kernels on a GPU: the autotune lists and which configs each GPU keeps.

Every config in :data:`GPU_CONFIGS` was compiled for sm_80 (A100) and sm_90 (H100) without a GPU
(``scripts/compile_flash_configs.py``, Triton's own compiler via :func:`course.gpu_compile.compile_report`)
at head dims 64 and 128, causal and not, bf16 and fp16 (or a sample of them: the CSV says which);
the results are in :data:`CONFIG_TABLE`
(registers, spilled bytes, shared memory, tensor-core instruction). At launch the autotuner keeps,
for the running GPU's architecture, only the configs that table says compile with no spills and
shared memory within the architecture's limit (:func:`kept_configs`). A config that spills reads and
writes registers through local memory (DRAM behind L1) inside the inner loop; timing it is wasted
autotuning at best, and a slow pick when the timings are noisy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import triton

from . import flash_kernels as kernels

#: Written by ``scripts/compile_flash_configs.py``: one row per (arch, kernel, config, head dim, dtype, causal).
CONFIG_TABLE = Path(__file__).resolve().parent / "results" / "kernel_configs_flash.csv"


@dataclass(frozen=True)
class BlockConfig:
    """Block sizes and launch options of one kernel (rows of queries x rows of keys per step)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot needs 16x16 tiles), got {value!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        if isinstance(self.num_stages, bool) or not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")


#: Block sizes when none are given and nothing is autotuned: under the CPU interpreter (small tiles keep
#: each program fast in NumPy), and for the notebook's kernels on a GPU (correct, not tuned).
DEFAULT_CONFIG = BlockConfig(32, 32)

# --- GPU block sizes: autotuned over a short list (each config compiles once per specialisation) ----
# The lists were chosen by compiling every config for sm_90 (H100) without a GPU (``triton.compile``
# with ``GPUTarget("cuda", 90, 32)``), reading registers from the cubin (``cuobjdump -res-usage``) and
# spills from ``ptxas -v``; :data:`CONFIG_TABLE` holds the per-arch results the pruner uses.

FWD_GPU_CONFIGS = [BlockConfig(128, 64, 4, 3), BlockConfig(128, 64, 8, 3), BlockConfig(128, 128, 8, 3),
                   BlockConfig(128, 32, 4, 4), BlockConfig(64, 64, 4, 3), BlockConfig(128, 64, 4, 4)]
DKDV_GPU_CONFIGS = [BlockConfig(32, 128, 8, 3), BlockConfig(64, 128, 8, 3), BlockConfig(32, 64, 4, 3),
                    BlockConfig(64, 64, 4, 3), BlockConfig(64, 64, 8, 3), BlockConfig(16, 128, 8, 3)]
DQ_GPU_CONFIGS = [BlockConfig(128, 32, 4, 3), BlockConfig(128, 64, 8, 3), BlockConfig(64, 64, 4, 3),
                  BlockConfig(64, 32, 4, 3), BlockConfig(128, 32, 8, 3), BlockConfig(64, 64, 8, 3)]
GPU_CONFIGS = {"fwd": FWD_GPU_CONFIGS, "dkdv": DKDV_GPU_CONFIGS, "dq": DQ_GPU_CONFIGS}

# --- sm_75 (Turing: a free Colab T4) gets its own short lists ------------------------------------
# Triton (3.9, measured with course.gpu_compile) compiles tl.dot for sm_75 without tensor cores: its
# AccelerateMatmul pass refuses MMA below sm_80 ("deprecated ... falls back to the FMA path"), so
# the PTX has fma.rn.f32 and no mma.sync, fp16 operands converted to fp32. Every operand tile then
# lives in registers: at d = 128 even fwd 64x32 (8 warps) spills 2.5 KB, and 3 stages of the tiles
# above overflow sm_75's 64 KiB of shared memory (fwd 128x64, 8 warps: 96 KiB). So: 16-row tiles
# (8 warps where the kernel holds 3-4 tiles of d columns), 2 stages; which compile cleanly per head
# dim is in CONFIG_TABLE (arch 75, fp16: a T4 has no bf16), with the tiles tried and dropped.
TURING_CONFIGS = {"fwd": [BlockConfig(64, 32, 8, 2), BlockConfig(16, 32, 4, 2)],
                  "dkdv": [BlockConfig(16, 16, 8, 2), BlockConfig(16, 32, 4, 2)],
                  "dq": [BlockConfig(16, 16, 8, 2), BlockConfig(16, 32, 4, 2)]}
TURING_ARCHS = (75,)  # the pre-Ampere archs CONFIG_TABLE covers


def _pre_ampere(arch: int | None) -> bool:
    """Below sm_80 Triton's tl.dot takes the FMA path (no tensor cores): the TURING_CONFIGS candidates."""
    return arch is not None and int(arch) < 80


def candidate_configs(kind: str, arch: int | None) -> list[BlockConfig]:
    """The configs the autotuner may try on ``sm_<arch>``: TURING_CONFIGS below sm_80, GPU_CONFIGS otherwise."""
    _check_kind(kind)
    return list(TURING_CONFIGS[kind] if _pre_ampere(arch) else GPU_CONFIGS[kind])
_TUNE_KEY = ["N_Q", "N_K", "HEAD_DIM", "CAUSAL"]


def config_name(config: BlockConfig) -> str:
    """``BLOCK_MxBLOCK_N-w<warps>-s<stages>``, the key of a config in :data:`CONFIG_TABLE`."""
    return f"{config.block_m}x{config.block_n}-w{config.num_warps}-s{config.num_stages}"


def _check_kind(kind: str) -> None:
    if kind not in GPU_CONFIGS:
        raise ValueError(f"kind must be 'fwd', 'dkdv' or 'dq', got {kind!r}")


def spills_on_sm90(kind: str, config: BlockConfig, head_dim: int) -> bool:
    """The rule measured on sm_90 before the per-arch table existed: at d = 128, 4-warp programs with
    128 query rows (forward, dQ) or more than 32 x 64 (dK/dV) spill, and 64 x 128 dK/dV blocks spill
    even with 8 warps. Used where the table has no row (an architecture or head dim not compiled)."""
    _check_kind(kind)
    if head_dim < 128:
        return False
    if kind == "dkdv":
        tile = config.block_m * config.block_n
        return tile > 32 * 128 or (config.num_warps == 4 and tile > 32 * 64)
    return config.num_warps == 4 and config.block_m == 128


@functools.lru_cache(maxsize=4)
def _table(path: str) -> dict:
    """{(arch, kind, head_dim): {config name: kept?}} from the compile table. A config is kept when
    every variant compiled (fp16/bf16, causal or not) has no spills, fits the arch's shared memory
    and compiled at all: the autotuner keys on head dim and causal, not dtype, so one verdict serves all."""
    from . import bench, gpu_compile

    if not Path(path).exists():
        return {}
    rows, _ = bench.load_csv(path)
    table: dict = {}
    for r in rows:
        arch = int(r["arch"])
        ok = (not r.get("error") and int(r["spills"]) == 0
              and 0 <= int(r["shared_bytes"]) <= gpu_compile.SHARED_LIMIT[arch])
        verdicts = table.setdefault((arch, r["kernel"], int(r["head_dim"])), {})
        verdicts[r["config"]] = verdicts.get(r["config"], True) and ok
    return table


def kept_configs(kind: str, configs: list[BlockConfig], *, arch: int | None, head_dim: int,
                 table: str | Path = CONFIG_TABLE) -> list[BlockConfig]:
    """The configs worth autotuning on ``sm_<arch>`` at this head dim: those the compile table says
    compile with no spills and shared memory within the limit (in every variant compiled).

    Where the table has no verdict for a config (an architecture other than sm_75/sm_80/sm_90, head
    dim 16 or 32, or a config added after the table was made) the sm_90 rule :func:`spills_on_sm90`
    decides: it is the only measurement there is, and Triton itself drops a config whose shared
    memory does not fit when it launches it. Below sm_80 (FMA path, see :data:`TURING_CONFIGS`) that
    rule means nothing: there an unmeasured config is kept only if it is one of the small Turing
    candidates. If nothing is kept, all configs are returned (the autotuner needs at least one; a
    spilling kernel is slow, not wrong).
    """
    _check_kind(kind)
    verdicts = {} if arch is None else _table(str(table)).get((int(arch), kind, int(head_dim)), {})

    def keep(c):
        name = config_name(c)
        if name in verdicts:
            return verdicts[name]
        if _pre_ampere(arch):
            return c in TURING_CONFIGS[kind]
        return not spills_on_sm90(kind, c, head_dim)

    return [c for c in configs if keep(c)] or list(configs)


def device_arch() -> int | None:
    """``10 * major + minor`` of the current CUDA device (90 on an H100), or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _as_block(c) -> BlockConfig:
    return BlockConfig(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


def _pruner(kind: str, arch: int | None = None, *, from_device: bool = False):
    """``prune_configs_by`` for ``triton.autotune``: :func:`kept_configs` for the launch's head dim on
    ``sm_<arch>``, or on the running device's arch with ``from_device`` (what the GPU path uses);
    with neither, the sm_90 rule alone. Only the arch's candidates (:func:`candidate_configs`) are
    considered: the Turing tiles on sm_75, the others on sm_80 and up."""
    _check_kind(kind)

    def prune(configs, named_args, **kwargs):
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 64))
        target = device_arch() if from_device else arch
        candidates = candidate_configs(kind, target)
        blocks = [_as_block(c) for c in configs]
        keep = kept_configs(kind, [b for b in blocks if b in candidates] or blocks, arch=target, head_dim=head_dim)
        return [c for c in configs if _as_block(c) in keep]

    return {"early_config_prune": prune}


def _triton_configs(configs: list[BlockConfig]) -> list:
    return [triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, num_warps=c.num_warps,
                          num_stages=c.num_stages) for c in configs]


def _tuned(kind: str, kernel):
    """``kernel`` autotuned over ``GPU_CONFIGS[kind]`` and ``TURING_CONFIGS[kind]``, pruned for the
    running GPU's arch at launch (each arch keeps only its own candidates)."""
    configs = GPU_CONFIGS[kind] + [c for c in TURING_CONFIGS[kind] if c not in GPU_CONFIGS[kind]]
    return triton.autotune(_triton_configs(configs), key=_TUNE_KEY,
                           prune_configs_by=_pruner(kind, from_device=True))(kernel)


_fwd_tuned = _tuned("fwd", kernels._fwd_kernel)
_dkdv_tuned = _tuned("dkdv", kernels._bwd_dkdv_kernel)
_dq_tuned = _tuned("dq", kernels._bwd_dq_kernel)


# --- compiling a config for a GPU without one (scripts/compile_flash_configs.py, tests) -------------

_TRITON_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
_STRIDES = ["stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn",
            "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_om"]


def signature(kind: str, dtype: str = "float16") -> dict:
    """The Triton types the GPU path launches kernel ``kind`` with (``'*bf16'`` tensors, ``'i32'`` sizes)."""
    _check_kind(kind)
    if dtype not in _TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {list(_TRITON_DTYPES)}, got {dtype!r}")
    t = "*" + _TRITON_DTYPES[dtype]
    if kind == "fwd":
        return {"Q": t, "K": t, "V": t, "O": t, "L": "*fp32", "sm_scale": "fp32",
                **{n: "i32" for n in _STRIDES + ["H", "N_Q", "N_K"]}}
    sig = {"Q": t, "K": t, "V": t, "DO": t, "L": "*fp32", "Delta": "*fp32"}
    sig.update({"DK": t, "DV": t} if kind == "dkdv" else {"DQ": t})
    return {**sig, "sm_scale": "fp32", "N_Q": "i32", "N_K": "i32"}


KERNELS = {"fwd": kernels._fwd_kernel, "dkdv": kernels._bwd_dkdv_kernel, "dq": kernels._bwd_dq_kernel}


def compile_config(kind: str, config: BlockConfig, *, head_dim: int, dtype: str, causal: bool, arch: int,
                   kernel=None, **constexprs):
    """Compile kernel ``kind`` (or ``kernel``, with the same signature) at ``config`` for ``sm_<arch>``:
    a :class:`course.gpu_compile.Report`. Extra ``constexprs`` (the ladder's switches) are passed on.

    Specialised as a launch at the benchmark's shapes is: every pointer, stride and length a multiple
    of 16 (torch aligns allocations; N = 512 .. 16384, d = 64 or 128). The head count H and the scale
    are not assumed to be. A launch with a ragged N compiles another variant, not in the table."""
    from . import gpu_compile

    consts = {"HEAD_DIM": head_dim, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "CAUSAL": causal,
              **constexprs}
    sig = signature(kind, dtype)
    aligned = [n for n, t in sig.items() if t.startswith("*") or (t == "i32" and n != "H")]
    return gpu_compile.compile_report(KERNELS[kind] if kernel is None else kernel, sig, consts, arch,
                                      num_warps=config.num_warps, num_stages=config.num_stages,
                                      divisible_by_16=aligned)
