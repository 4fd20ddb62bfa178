"""course.runtime: device choice, seeding, size presets and the Triton switch."""

import os
import subprocess
import sys

import pytest
import torch

from course import runtime


def test_device_is_cpu_without_cuda():
    assert runtime.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.on_gpu() == torch.cuda.is_available()


def test_seed_everything_makes_torch_and_numpy_repeatable():
    import numpy as np

    runtime.seed_everything(7)
    a = (torch.rand(3), np.random.rand(3))
    runtime.seed_everything(7)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all()


@pytest.mark.parametrize("bad", [1.5, "3", None, True, -1, 2**32])
def test_seed_everything_rejects_bad_seeds_by_name(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        runtime.seed_everything(bad)


def test_size_preset_defaults_by_device_and_obeys_the_environment(monkeypatch):
    monkeypatch.delenv("COURSE_SIZE", raising=False)
    assert runtime.size_preset() == ("full" if torch.cuda.is_available() else "small")
    monkeypatch.setenv("COURSE_SIZE", "full")
    assert runtime.pick(small=1, full=2) == 2
    monkeypatch.setenv("COURSE_SIZE", "huge")
    with pytest.raises(ValueError, match="COURSE_SIZE must be one of"):
        runtime.size_preset()


def test_importing_course_switches_triton_to_the_interpreter_and_says_so_once():
    # A fresh interpreter: importing course twice prints the notice once; then a kernel runs on the CPU.
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import course, importlib; importlib.reload(course)\n"
        "print('mode', course.runtime.triton_mode(), os.environ.get('TRITON_INTERPRET'))\n"
        "import torch, triton, triton.language as tl\n"
        "@triton.jit\n"
        "def double(x, n, B: tl.constexpr):\n"
        "    o = tl.arange(0, B); m = o < n\n"
        "    tl.store(x + o, tl.load(x + o, mask=m) * 2, mask=m)\n"
        "t = torch.arange(5.0); double[(1,)](t, 5, B=8); print('kernel', t.tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    if torch.cuda.is_available():
        pytest.skip("with a GPU, kernels compile instead")
    assert out.stdout.count("Triton kernels run on the CPU in the interpreter") == 1
    assert "mode interpreter 1" in out.stdout
    assert "kernel [0.0, 2.0, 4.0, 6.0, 8.0]" in out.stdout


def test_progress_bars_are_silent_when_headless(monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    assert runtime.progress(range(3)).disable
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    assert not runtime.progress(range(3)).disable


def test_bf16_is_refused_in_the_interpreter_with_a_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match="interpreter computes wrongly"):
        runtime.require_floating_point_dtype("q", torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="q must have dtype"):
        runtime.require_floating_point_dtype("q", torch.zeros(2, dtype=torch.int32))
    runtime.require_floating_point_dtype("q", torch.zeros(2, dtype=torch.float16))
