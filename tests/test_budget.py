"""The per-solution budget in the root conftest.py is enforced on kernel CPU seconds, not wall time."""

import importlib.util
from pathlib import Path

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


def load_root_conftest():
    spec = importlib.util.spec_from_file_location("root_conftest_for_test", ROOT_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_slow_wall_clock_with_little_cpu_is_within_budget():
    conf = load_root_conftest()
    conf._notebook_seconds.update({"05_busy_neighbour.ipynb": 140.0})  # wall time under a loaded machine
    conf._notebook_cpu.update({"05_busy_neighbour.ipynb": 75.0})  # what the kernel itself used
    assert conf._over_budget() == set()


def test_too_much_cpu_is_over_budget():
    conf = load_root_conftest()
    conf._notebook_seconds.update({"slow.ipynb": 100.0})
    conf._notebook_cpu.update({"slow.ipynb": conf.NOTEBOOK_BUDGET_S + 1})
    assert conf._over_budget() == {"slow.ipynb"}


def test_without_a_cpu_reading_the_wall_time_counts():
    conf = load_root_conftest()
    conf._notebook_seconds.update({"no_proc.ipynb": conf.NOTEBOOK_BUDGET_S + 1})
    assert conf._over_budget() == {"no_proc.ipynb"}
