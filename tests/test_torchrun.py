"""The distributed notebooks under torchrun, as their own scale-out cells print them.

``scripts/run_notebook_torchrun.py`` runs a solution's code cells in each of torchrun's processes
(gloo on this CPU machine), where ``dist.pool`` joins torchrun's group and the world size comes from
the launch. Each test starts real processes importing torch on a shared machine, so they are
``slow`` and their time limits are generous; the time each took is printed (``pytest -s``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun_notebook(notebook: str, ranks: int, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COURSE_HEADLESS="1", MPLBACKEND="Agg")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    start = time.monotonic()
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", str(ranks),
                           str(REPO / "scripts" / "run_notebook_torchrun.py"), str(REPO / "solutions" / notebook)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    seconds = time.monotonic() - start
    print(f"torchrun --nproc-per-node {ranks} {notebook}: exit {proc.returncode} in {seconds:.0f} s")
    return proc, seconds


@pytest.mark.slow
@pytest.mark.parametrize("notebook, claim", [
    ("06_zero.ipynb", "every stage equals the single-process run and torch's implementations within 1e-05: True"),
    ("07_megatron.ipynb", "|loss difference| <= 1e-6: True; max gradient difference <= 1e-6: True"),
    ("08_paro.ipynb", "all ten strategies train like one process (1e-5); live model-state bytes at the snapshot, "
                      "measured, within 0.1% of the formula (padding; CUDA's 512-byte blocks taken off): True")])
def test_the_notebook_runs_under_torchrun_with_4_ranks(notebook, claim):
    proc, _ = torchrun_notebook(notebook, 4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"ran {notebook} on 4 ranks" in proc.stdout
    assert claim in proc.stdout  # rank 0's output: the notebook's compared claim held under torchrun too


@pytest.mark.slow
def test_megatron_runs_under_its_own_scale_out_command_with_8_ranks():
    proc, _ = torchrun_notebook("07_megatron.ipynb", 8)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ran 07_megatron.ipynb on 8 ranks" in proc.stdout
    assert "tensor-parallel layer equals the one-rank Block (1e-5) and sends exactly 8bsh(t-1)/t elements: True" \
        in proc.stdout
    assert "|loss difference| <= 1e-6: True; max gradient difference <= 1e-6: True" in proc.stdout


@pytest.mark.slow
def test_megatron_on_a_world_size_that_does_not_divide_the_heads_stops_naming_the_rule():
    proc, _ = torchrun_notebook("07_megatron.ipynb", 3, timeout=300)
    assert proc.returncode != 0
    assert "4 attention heads do not split over 3 tensor-parallel ranks" in proc.stderr
    assert "divisible by the tensor-parallel size" in proc.stderr
    assert "ZeroDivisionError" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["06_zero.ipynb", "08_paro.ipynb"])
def test_zero_and_paro_with_one_rank_stop_where_the_world_size_is_read_naming_the_rule(notebook):
    # torchrun --nproc-per-node 1 (say, on a one-GPU machine) once ran on to a ZeroDivisionError
    # (06: the traffic table; 08: the wire-byte ratios)
    proc, _ = torchrun_notebook(notebook, 1, timeout=300)
    assert proc.returncode != 0
    assert f"notebook {notebook[:2]} needs at least 2 ranks; got 1" in proc.stderr
    assert f"<{notebook} code cell 0>" in proc.stderr  # the first code cell, where WORLD is read
    assert "ZeroDivisionError" not in proc.stderr
