"""The GPU run kit (``scripts/gpu_check.py``, ``make gpu-check``), checked on the CPU: without a GPU it
says so and measures nothing; its plan runs the kernel tests compiled and every bench script within
the 8-minute budget; the bars it prints come from the CSVs the benchmarks write."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import course  # noqa: F401  (first)
from course import bench, bitnet, lora
from course import flash_attention as fa

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def kit():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _run(*args, env_extra=None):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=env)


def test_without_a_gpu_the_kit_says_so_measures_nothing_and_exits_0(kit):
    before = kit.SUMMARY_CSV.stat().st_mtime if kit.SUMMARY_CSV.exists() else None
    done = _run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no GPU: nothing measured" in done.stdout
    after = kit.SUMMARY_CSV.stat().st_mtime if kit.SUMMARY_CSV.exists() else None
    assert after == before, "the kit wrote a summary without a GPU"


def test_the_plan_runs_the_kernel_tests_and_every_bench_script_within_8_minutes(kit):
    steps = kit.plan("python")
    tests = [next(a for a in s.argv if a.startswith("tests/")) for s in steps if "pytest" in s.argv]
    assert tests == ["tests/test_flash_attention.py", "tests/test_lora.py", "tests/test_bitnet.py",
                     "tests/test_gpu_paths.py", "tests/test_parallel.py"]
    assert [s.argv[-2:] for s in steps if "tests/test_parallel.py" in s.argv] == [("-k", "cuda")]
    scripts = {a for s in steps for a in s.argv if a.startswith("scripts/")}
    every_bench = {f"scripts/{p.name}" for p in (REPO / "scripts").glob("bench_*.py")}
    assert every_bench <= scripts, f"bench scripts the kit does not run: {every_bench - scripts}"
    assert any("--ladder" in s.argv for s in steps)
    assert sum(s.timeout_s for s in steps) <= kit.BUDGET_S == 8 * 60
    for s in steps:
        if s.writes:
            assert s.writes.startswith("course/results/") and s.writes.endswith("_gpu.csv"), s


def test_every_step_runs_with_triton_compiling(kit, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET" not in kit.compiled_env()


def test_dry_run_prints_every_command_and_its_time_limit(kit):
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    for step in kit.plan(sys.executable):
        assert step.command() in done.stdout
        assert f"[{step.timeout_s:>3} s] {step.name}" in done.stdout
    assert "TRITON_INTERPRET unset" in done.stdout


def test_bars_are_read_from_the_csvs_this_run_wrote(kit, tmp_path, monkeypatch):
    # Synthetic numbers: they test the wiring from CSV to verdict, measure nothing.
    shape = fa.PERF_BAR_SHAPE
    impls = (("triton (ours)", 90.0), ("torch sdpa (flash)", 100.0))
    fa_rows = [{"impl": impl, "mode": mode, "dtype": shape["dtype"], "causal": False,
                "batch_heads": shape["batch_heads"], "n": shape["n"], "d": shape["d"], "ms": 1.0, "tflops": tflops}
               for mode in ("fwd", "fwd_bwd") for impl, tflops in impls]
    lora_rows = [{"name": "fused", "tokens": 8192, "ms": 1.2}, {"name": "base", "tokens": 8192, "ms": 1.0}]
    bitnet_rows = [{"name": "torch_matmul", "size": 16384, "batch": 1, "ms": 0.6},
                   {"name": "ternary_kernel", "size": 16384, "batch": 1, "ms": 0.15}]
    paths = {}
    for module, rows, name in ((fa, fa_rows, "fa.csv"), (lora, lora_rows, "lora.csv"), (bitnet, bitnet_rows, "b.csv")):
        paths[name] = bench.save_csv(rows, tmp_path / name)
        monkeypatch.setattr(module, "RESULTS_CSV", paths[name])
    lines = kit.bar_lines(since=0.0)
    assert "FlashAttention fwd     causal=False: 0.90x SDPA flash (90 vs 100 TFLOP/s), bar >= 0.8: met" in lines
    assert "fused LoRA / base matmul at 8192 tokens: 1.200x, bar <= 1.1: NOT met" in lines
    assert "packed ternary GEMV at 16384^2, batch 1: 4.00x faster than bf16 matmul, bar >= 3x: met" in lines
    stale = kit.bar_lines(since=paths["fa.csv"].stat().st_mtime + 60)  # written before this run: not used
    assert all("not measured in this run" in line for line in stale), stale


def test_plan_runs_notebook_06_on_nccl_only_with_two_or_more_gpus(kit):
    assert not any("06_zero" in s.command() for s in kit.plan(gpus=1))
    steps = kit.plan(gpus=8)
    (step,) = [s for s in steps if "06_zero" in s.command()]
    assert "--nproc-per-node 4" in step.command()
    assert sum(s.timeout_s for s in steps) <= kit.BUDGET_S
