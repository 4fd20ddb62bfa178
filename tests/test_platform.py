"""course.runtime.platform_support: which notebooks run fully on this OS (Triton ships for Linux only)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course import runtime

REPO = Path(__file__).resolve().parent.parent


def test_linux_with_triton_runs_every_notebook_fully():
    assert runtime.platform_support("Linux", has_triton=True) == "Linux with Triton: every notebook runs fully"


@pytest.mark.parametrize("system, name", [("Darwin", "macOS"), ("Windows", "Windows")])
def test_macos_and_windows_name_the_triton_notebooks_and_where_to_run_them(system, name):
    text = runtime.platform_support(system, has_triton=False)
    assert text.startswith(f"{name} without Triton: notebooks 00, 02, 03, 04 need Linux for their Triton cells")
    assert "Linux only" in text and "Colab" in text and text.endswith("every other notebook runs fully")


def test_linux_without_triton_says_how_to_install_it():
    assert "pip install -r requirements.txt" in runtime.platform_support("Linux", has_triton=False)


def test_triton_available_tells_the_truth_on_this_machine():
    try:
        import triton  # noqa: F401

        present = True
    except ImportError:
        present = False
    assert runtime.triton_available() == present
    assert ("with Triton:" if present else "without Triton:") in runtime.platform_support()


def test_the_triton_notebooks_are_the_solutions_with_triton_kernels():
    # The same rule as the course map's "CPU/GPU needs" column (scripts/make_course_map.py).
    with_kernels = []
    for path in sorted((REPO / "solutions").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "code")
        if "@triton.jit" in code or "course.flash_attention" in code:
            with_kernels.append(path.stem.split("_", 1)[0])
    assert tuple(with_kernels) == runtime.TRITON_NOTEBOOKS


def test_import_course_reports_the_platform_when_triton_cannot_be_imported():
    # sys.modules["triton"] = None makes every `import triton` fail, as on macOS or Windows.
    code = "import sys; sys.modules['triton'] = None\nimport course\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "without Triton: notebooks 00, 02, 03, 04 need " in out.stdout, out.stdout


def test_import_course_with_triton_prints_no_platform_line():
    # Stored notebook outputs (nbval) include what `import course` prints: with Triton it must not change.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", "import course"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    if runtime.triton_available():
        assert "Triton:" not in out.stdout, out.stdout
