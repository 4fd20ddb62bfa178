"""course.bench: timing, tables, plots, and CSVs that say where and when they were measured."""

import time

import pytest

from course import bench


def test_time_fn_measures_a_known_sleep_within_scheduler_noise():
    timing = bench.time_fn(lambda: time.sleep(0.01), warmup=1, repeats=5, device="cpu")
    # 10 ms sleep; the OS may oversleep by a few ms on a loaded machine, never undersleep.
    assert 9.5 <= timing.median_ms <= 40
    assert timing.p20_ms <= timing.median_ms <= timing.p80_ms and timing.repeats == 5


def test_time_fn_runs_warmup_calls_that_are_not_timed():
    calls = []
    bench.time_fn(lambda: calls.append(1), warmup=3, repeats=4, device="cpu")
    assert len(calls) == 7


@pytest.mark.parametrize("kwargs, match", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"),
                                           ({"repeats": 2.5}, "repeats")])
def test_time_fn_rejects_bad_arguments_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench.time_fn(lambda: None, device="cpu", **kwargs)
    with pytest.raises(TypeError, match="callable"):
        bench.time_fn(42)


def test_sweep_returns_tidy_rows_with_tflops():
    rows = bench.sweep({"a": lambda n: (lambda: sum(range(n)))}, [10, 20], x_name="n", flops=lambda n: 1e6,
                       repeats=2, progress=False)
    assert [(r["name"], r["n"]) for r in rows] == [("a", 10), ("a", 20)]
    assert all(r["tflops"] > 0 and r["ms"] > 0 for r in rows)


def test_format_table_aligns_columns_and_names_missing_ones():
    text = bench.format_table([{"name": "x", "ms": 1.23456}, {"name": "longer", "ms": 10.0}])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "ms"] and "1.23" in lines[2] and len({len(line) for line in lines}) == 1
    with pytest.raises(KeyError, match="not in the rows"):
        bench.format_table([{"a": 1}], ["b"])


def test_csv_round_trip_keeps_numbers_and_device_tags(tmp_path):
    rows = [{"name": "naive", "n": 512, "ms": 1.5}, {"name": "flash", "n": 1024, "ms": 0.25}]
    path = bench.save_csv(rows, tmp_path / "r.csv", tags={"note": "unit test"})
    loaded, tags = bench.load_csv(path)
    assert loaded == rows
    assert {"device", "torch", "date", "note"} <= set(tags)
    assert "measured on" in bench.measured_note(tags)
    with pytest.raises(ValueError, match="no measurements"):
        bench.save_csv([], tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="no measured results"):
        bench.load_csv(tmp_path / "missing.csv")


def test_plot_sweep_labels_axes_and_rejects_unknown_columns():
    import matplotlib

    matplotlib.use("Agg")
    rows = [{"name": "a", "n": 1, "ms": 2.0}, {"name": "a", "n": 2, "ms": 3.0}]
    ax = bench.plot_sweep(rows, x="n", y="ms", xlabel="n (tokens)", ylabel="time (ms)")
    assert ax.get_xlabel() == "n (tokens)" and ax.get_ylabel() == "time (ms)"
    with pytest.raises(KeyError, match="not a column"):
        bench.plot_sweep(rows, x="n", y="tflops")
