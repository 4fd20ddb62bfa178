"""scripts/grpo_uncovered.py: the coverage split it trains on, and a --quick run that writes its CSV."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course import bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "grpo_uncovered.py"


def load_script():
    spec = importlib.util.spec_from_file_location("grpo_uncovered", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def operands(example):
    a, b = example.prompt.rstrip("=").split("+")
    return int(a), int(b)


def test_coverage_split_is_disjoint_and_no_demonstration_covers_an_uncovered_problem():
    script = load_script()
    split = script.coverage_split(lambda a, b: b >= script.UNCOVERED_FROM)
    prompts = {name: [e.prompt for e in examples] for name, examples in split.items()}
    every = [p for names in prompts.values() for p in names]
    assert len(every) == len(set(every)) == (script.MAX_OPERAND + 1) ** 2  # each problem in one list only
    assert all(operands(e)[1] < script.UNCOVERED_FROM for name in ("sft", "covered_heldout")
               for e in split[name])
    assert all(operands(e)[1] >= script.UNCOVERED_FROM for name in ("rl_uncovered", "uncovered_heldout")
               for e in split[name])
    assert len(split["covered_heldout"]) == len(split["uncovered_heldout"]) == script.N_HELDOUT
    assert all(e.answer == str(sum(operands(e))) for examples in split.values() for e in examples)


def test_coverage_split_refuses_a_split_with_nothing_uncovered():
    script = load_script()
    with pytest.raises(ValueError, match="split too small"):
        script.coverage_split(lambda a, b: False)


@pytest.mark.slow  # a subprocess: about 10 s of CPU time (imports, two tiny SFT starts, pass@16 sampling)
def test_quick_run_writes_every_metric_for_both_methods(tmp_path):
    out = tmp_path / "uncovered.csv"
    subprocess.run([sys.executable, str(SCRIPT), "--seeds", "0", "--sft-steps", "3", "--steps", "2",
                    "--eval-every", "1", "--answer-split-too", "--out", str(out)],
                   check=True, cwd=ROOT, timeout=300,
                   env={**os.environ, "COURSE_HEADLESS": "1", "COURSE_THREADS": "1"})
    rows, tags = bench.load_csv(out)
    main = [r for r in rows if r["split"] == "b>=15"]
    greedy = {(r["method"], r["step"], r["metric"]) for r in main if "greedy" in r["metric"]}
    assert greedy == {(m, s, k) for m in ("SFT", "GRPO") for s in (0, 1, 2)
                      for k in ("covered_greedy", "uncovered_greedy")}
    passes = {(r["method"], r["step"]) for r in main if r["metric"] == "uncovered_pass16"}
    assert passes == {(m, s) for m in ("SFT", "GRPO") for s in (0, 2)}  # start and end of each run
    assert [r["split"] for r in rows if r["method"] == "SFT start"] == ["a+b>=30"]
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert tags["seeds"] == "0" and "steps=2" in tags["config"]
    assert "cpu_model" in tags and "equal_compute" in tags


def test_merge_seed_csvs_concatenates_the_seeds_and_refuses_mismatched_parts(tmp_path):
    from course import bench
    from course.seed_csv import merge_seed_csvs

    def part(seed, config="steps=3"):
        path = tmp_path / f"s{seed}_{config}.csv"
        bench.save_csv([{"seed": seed, "value": seed / 10}], path, tags={
            "script": "x.py", "config": config, "threads": "1", "seeds": str(seed), "seconds_per_seed": str(10 + seed)})
        return path

    out = merge_seed_csvs([part(0), part(1), part(2)], tmp_path / "all.csv")
    rows, tags = bench.load_csv(out)
    assert [r["seed"] for r in rows] == [0, 1, 2] and [r["value"] for r in rows] == [0.0, 0.1, 0.2]
    assert tags["seeds"] == "0,1,2" and tags["seconds_per_seed"] == "10,11,12" and tags["seconds_total"] == "33"
    with pytest.raises(ValueError, match="more than one part"):
        merge_seed_csvs([part(0), part(0)], tmp_path / "dup.csv")
    with pytest.raises(ValueError, match="config"):
        merge_seed_csvs([part(0), part(1, "steps=4")], tmp_path / "mixed.csv")
