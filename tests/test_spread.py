"""course.spread: summaries over seeds and the 'ranges do not overlap' rule."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course import spread  # noqa: E402


def test_spread_summarises_mean_std_and_range():
    s = spread.spread([1.0, 2.0, 3.0])
    assert (s.mean, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.std == pytest.approx(1.0)  # sample standard deviation, n - 1
    assert s.format() == "2 (1-3, 3 seeds)"


def test_spread_of_one_value_has_zero_std():
    assert spread.spread([0.5]).std == 0.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_spread_refuses_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        spread.spread(bad)


def test_separated_needs_disjoint_ranges():
    assert spread.separated([3, 4, 5], [1, 2, 2.9]) == 1
    assert spread.separated([1, 2], [3, 4]) == -1
    assert spread.separated([1, 3], [2, 4]) == 0  # overlap: no verdict
    assert spread.separated([2], [2]) == 0  # ties are not a win


def test_compare_says_within_noise_when_ranges_overlap():
    assert "within noise" in spread.compare("A", [0.5, 0.7], "B", [0.6, 0.8])
    text = spread.compare("A", [0.9, 0.95], "B", [0.6, 0.8])
    assert "A is higher on every seed" in text and "within noise" not in text


def test_by_group_collects_one_value_per_seed():
    rows = [{"m": "x", "seed": 0, "v": 1}, {"m": "y", "seed": 0, "v": 2}, {"m": "x", "seed": 1, "v": 3}]
    assert spread.by_group(rows, "m", "v") == {"x": [1.0, 3.0], "y": [2.0]}
    assert spread.by_group(rows, ["m", "seed"], "v")[("x", 1)] == [3.0]


def test_plot_band_draws_mean_and_checks_lengths():
    fig, ax = plt.subplots()
    line = spread.plot_band(ax, [0, 1], [[0, 2], [2, 4]], label="run")
    assert list(line.get_ydata()) == [1.0, 3.0]
    with pytest.raises(ValueError):
        spread.plot_band(ax, [0, 1, 2], [[0, 2]], label="bad")
    plt.close(fig)
