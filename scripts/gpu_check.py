"""The GPU run kit: on a machine with a CUDA GPU, run the kernel tests compiled and every benchmark.

    make gpu-check                        # or: python scripts/gpu_check.py
    python scripts/gpu_check.py --dry-run # print the plan (commands and time limits), run nothing

No Jupyter is needed. In order, each step a subprocess with its own time limit:

1. the kernel tests with Triton compiling (``TRITON_INTERPRET`` removed from the environment):
   tests/test_flash_attention.py, test_lora.py, test_bitnet.py, test_gpu_paths.py, and the CUDA test of
   tests/test_parallel.py (MemTracker's counts against the caching allocator's 512-byte blocks);
2. every ``scripts/bench_*.py`` (each checks its kernel against a reference before timing it), plus
   the FlashAttention ladder; they write ``course/results/*_gpu.csv`` with the device name and date
   in the header (``course.bench.save_csv``);
3. a summary: each step's verdict (also written to ``course/results/gpu_check_gpu.csv``) and the
   issue's bars, read back from the CSVs this run wrote: FlashAttention forward >= 0.8x and
   forward+backward >= 0.6x torch SDPA's flash backend (bf16, batch*heads 32, N 4096, d 128);
   fused LoRA <= 1.10x the base matmul (8192 tokens, d 4096, r 16); packed ternary GEMV >= 3x a bf16
   matmul at 16384 x 16384, batch 1;
4. with two or more GPUs, notebook 06 (ZeRO) under ``torchrun`` on NCCL, one rank per GPU (up to 4),
   its compared claims checked as under nbval (scripts/run_notebook_torchrun.py): the distributed
   notebooks' device and point-to-point code on a real GPU backend. With one GPU the step is left
   out: NCCL needs a GPU per rank, and 06 needs at least two ranks (with one it stops at once and
   says so: ``check.data_parallel_ranks``).

The time limits add up to :data:`BUDGET_S` (8 minutes, the issue's budget on one H100); a step that
runs over is stopped and reported as such, and the next one starts. On a machine without a CUDA GPU
it says so and exits 0 having run nothing ("no GPU: nothing measured"). Exit status 1 when a step
failed or timed out.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "course" / "results"
SUMMARY_CSV = RESULTS / "gpu_check_gpu.csv"
BUDGET_S = 480
KERNEL_TESTS = ("tests/test_flash_attention.py", "tests/test_lora.py", "tests/test_bitnet.py",
                "tests/test_gpu_paths.py")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: int
    writes: str = ""  # the CSV a benchmark step writes, relative to the repo

    def command(self) -> str:
        return " ".join(self.argv)


def plan(python: str = sys.executable, gpus: int | None = None) -> list[Step]:
    """The steps, in order. Time limits: measured nowhere yet (no GPU was lent when this was written);
    sized so that they sum to BUDGET_S, the larger ones where compiling and autotuning happen."""
    pytest = (python, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    tests = [Step("test " + Path(f).stem.removeprefix("test_"), (*pytest, f), t)
             for f, t in zip(KERNEL_TESTS, (65, 45, 45, 30))]
    # MemTracker on the real caching allocator: the 512-byte rule 08's memory claims use (simulated on a CPU)
    tests.append(Step("test memory on cuda", (*pytest, "tests/test_parallel.py", "-k", "cuda"), 15))
    benches = [
        # the bar's shape and two others, bf16, d = 128: the full sweep (288 cases) takes longer than the kit may
        Step("bench flash_attention", (python, "scripts/bench_flash_attention.py", "--dtype", "bfloat16", "--d", "128",
                                       "--n", "1024", "4096", "8192", "--repeats", "50"), 90,
             "course/results/flash_attention_gpu.csv"),
        Step("bench flash ladder", (python, "scripts/bench_flash_attention.py", "--ladder", "--repeats", "50"), 50,
             "course/results/flash_ladder_gpu.csv"),
        Step("bench lora", (python, "scripts/bench_lora.py"), 50, "course/results/lora_gpu.csv"),
        Step("bench bitnet", (python, "scripts/bench_bitnet.py"), 45, "course/results/bitnet_gpu.csv"),
    ]
    ranks = min(4, gpu_count() if gpus is None else gpus)
    distributed = [Step(f"06 on NCCL, {ranks} ranks", (python, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc-per-node", str(ranks), "scripts/run_notebook_torchrun.py",
                                                        "solutions/06_zero.ipynb"), 45)] if ranks >= 2 else []
    return tests + benches + distributed


def gpu_count() -> int:
    """CUDA GPUs on this machine (0 without torch's CUDA build or a GPU)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def compiled_env() -> dict:
    """The environment with Triton compiling: TRITON_INTERPRET removed (course sets it only without a GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    return env


def has_cuda_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_step(step: Step, timeout_s: float, log_dir: Path) -> dict:
    """Run one step under its time limit; its output goes to ``log_dir`` and the last line is kept."""
    start = time.perf_counter()
    log = log_dir / (step.name.replace(" ", "_") + ".log")
    with log.open("w") as out:
        try:
            done = subprocess.run(step.argv, cwd=REPO, env=compiled_env(), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout_s)
            status, rc = ("passed" if done.returncode == 0 else "failed"), done.returncode
        except subprocess.TimeoutExpired:
            status, rc = "timed out", -1
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {"step": step.name, "status": status, "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "limit_s": round(timeout_s), "last_line": lines[-1][:200] if lines else "", "log": str(log)}


def _fresh_rows(path: Path, since: float) -> tuple[list[dict], dict]:
    """Rows of a results CSV written after ``since`` (this run), else nothing."""
    from course import bench

    if not path.exists() or path.stat().st_mtime < since:
        return [], {}
    return bench.load_csv(path)


def bar_lines(since: float) -> list[str]:
    """The issue's bars, from the CSVs this run wrote; 'not measured' for those it did not."""
    import course  # noqa: F401
    from course import bitnet, lora
    from course import flash_attention as fa

    lines = []
    rows, tags = _fresh_rows(fa.RESULTS_CSV, since)
    fa_bars = fa.perf_bar_summary(rows) if rows else []
    for r in fa_bars:
        lines.append(f"FlashAttention {r['mode']:<7} causal={r['causal']!s:<5}: {r['ratio']:.2f}x SDPA flash "
                     f"({r['ours_tflops']:.0f} vs {r['sdpa_tflops']:.0f} TFLOP/s), bar >= {r['bar']}: "
                     f"{'met' if r['met'] else 'NOT met'}")
    if not fa_bars:
        lines.append("FlashAttention vs SDPA flash: not measured in this run")
    rows, _ = _fresh_rows(lora.RESULTS_CSV, since)
    prefill = [b for b in lora.performance_bars(rows) if b["bar"].startswith("fused / base")] if rows else []
    lines += [f"fused LoRA / base matmul at {b['tokens']} tokens: {b['ratio']:.3f}x, bar <= {b['target']}: "
              f"{'met' if b['met'] else 'NOT met'}" for b in prefill] or [
        "fused LoRA vs base: not measured in this run"]
    rows, _ = _fresh_rows(bitnet.RESULTS_CSV, since)
    gemv = [r for r in bitnet.speedups(rows) if r["batch"] == 1 and r["size"] == 16384] if rows else []
    lines += [f"packed ternary GEMV at 16384^2, batch 1: {r['speedup']:.2f}x faster than bf16 matmul, bar >= 3x: "
              f"{'met' if r['speedup'] >= 3 else 'NOT met'}" for r in gemv] or [
        "packed ternary GEMV vs bf16: not measured in this run"]
    return lines


def write_summary(results: list[dict], device: str) -> Path:
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    SUMMARY_CSV.parent.mkdir(parents=True, exist_ok=True)
    with SUMMARY_CSV.open("w", newline="") as f:
        f.write(f"# device: {device}\n# date: {date}\n# what: scripts/gpu_check.py, one row per step\n")
        writer = csv.DictWriter(f, fieldnames=["device", "date", *results[0]])
        writer.writeheader()
        writer.writerows({"device": device, "date": date, **r} for r in results)
    return SUMMARY_CSV


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the steps and their time limits; run nothing")
    p.add_argument("--logs", default=str(Path(tempfile.gettempdir()) / "gpu_check_logs"),
                   help="where each step's output goes (default: a folder in the system's temp dir)")
    args = p.parse_args(argv)
    steps = plan()
    if args.dry_run:
        print(f"gpu-check plan: {len(steps)} steps, time limits summing to {sum(s.timeout_s for s in steps)} s "
              f"(budget {BUDGET_S} s); TRITON_INTERPRET unset in every step")
        for s in steps:
            print(f"  [{s.timeout_s:>3} s] {s.name:<22} {s.command()}" + (f"  -> {s.writes}" if s.writes else ""))
        return 0
    if not has_cuda_gpu():
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False).")
        print("no GPU: nothing measured")
        return 0

    import torch

    device = torch.cuda.get_device_name(0)
    print(f"gpu-check on {device}: {len(steps)} steps within {BUDGET_S} s", flush=True)
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    since = time.time()
    start = time.perf_counter()
    results = []
    for step in steps:
        left = BUDGET_S - (time.perf_counter() - start)
        if left < 5:
            results.append({"step": step.name, "status": "skipped (budget spent)", "rc": -1, "seconds": 0.0,
                            "limit_s": 0, "last_line": "", "log": ""})
            continue
        r = run_step(step, min(step.timeout_s, left), log_dir)
        results.append(r)
        print(f"{time.perf_counter() - start:6.0f}s  {r['status']:<10} {step.name:<22} ({r['seconds']:.0f} s) "
              f"{r['last_line']}", flush=True)
    path = write_summary(results, device)
    print(f"\nsteps: {sum(r['status'] == 'passed' for r in results)}/{len(results)} passed; wrote {path}")
    print(f"bars ({device}):")
    for line in bar_lines(since):
        print("  " + line)
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
