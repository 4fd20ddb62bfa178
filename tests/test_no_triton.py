"""Without Triton (macOS, native Windows), import course installs a stand-in (course/_no_triton.py):
the PyTorch parts of notebooks 00, 02-04 and their check modules work, and a Triton kernel defines
fine but stops with a message naming where Triton cells run. Simulated on this Linux machine with
``sys.modules["triton"] = None``, which makes every ``import triton`` fail as it does there.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from course import runtime

REPO = Path(__file__).resolve().parent.parent

# torch first (it reads platform.system() while loading), then pretend this is a Mac with no Triton.
PRELUDE = """\
import platform, sys
import torch
sys.modules["triton"] = None
platform.system = lambda: {system!r}
"""


def run_without_triton(code: str, system: str = "Darwin", timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["COURSE_HEADLESS"] = "1"
    source = PRELUDE.format(system=system) + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def triton_kernel_sources() -> str:
    """Every @triton.jit function (with its decorators) of the solution notebooks, as they define them."""
    kernels = []
    for path in sorted((REPO / "solutions").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or "@triton." not in source:
                continue
            python = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
            tree = ast.parse("\n".join(python))
            for node in tree.body:
                decorators = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
                if isinstance(node, ast.FunctionDef) and any("triton" in d for d in decorators):
                    kernels.append(ast.unparse(node))
    return "\n\n".join(kernels)


def test_check_modules_import_and_kernels_define_without_triton():
    kernels = triton_kernel_sources()
    assert kernels.count("def ") >= 6, kernels  # 00, 02 (forward, backward), 03, 04 at least
    out = run_without_triton(f"""
        import course
        from course import runtime, bench
        from course.checks import flash_attention, lora, bitnet, start_here
        from course import flash_attention as fa, lora as lora_mod, bitnet as bitnet_mod
        import math
        import triton
        import triton.language as tl
        assert not runtime.triton_available()
        assert triton.cdiv(10, 4) == 3
        assert triton.next_power_of_2(17) == 32 and triton.next_power_of_2(16) == 16
        print("triton", triton.__version__)
        namespace = {{"triton": triton, "tl": tl, "torch": torch, "math": math}}
        # no `from __future__ import annotations` here: `BLOCK: tl.constexpr` evaluates, as in a notebook
        exec(compile({kernels!r}, "<kernels>", "exec"), namespace)
        defined = sorted(k for k, v in namespace.items() if isinstance(v, triton.JITFunction))
        print("kernels defined:", defined)
        print("tags:", bench.environment_tags()["triton"])
    """)
    assert "macOS without Triton: notebooks 00, 02, 03, 04 need Linux" in out.stdout, out.stdout
    assert "interpreter" not in out.stdout.splitlines()[0], out.stdout  # no Triton: no interpreter either
    assert "kernels defined: ['" in out.stdout and "tags: absent" in out.stdout, out.stdout


def test_launching_a_kernel_says_where_it_runs_and_a_check_reports_it():
    out = run_without_triton("""
        import course
        from course.checks import core, start_here as check
        import triton
        import triton.language as tl

        @triton.jit
        def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            total = tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask)
            tl.store(out_ptr + offs, total, mask=mask)

        x = torch.ones(8)
        try:
            add_kernel[(triton.cdiv(8, 4),)](x, x, x, 8, BLOCK=4)
        except RuntimeError as error:
            print("LAUNCH:", error)
        check.vector_add(add_kernel)
        assert not core.RESULTS[-1].passed
        print("RESULT:", core.RESULTS[-1].message)
        check.relu(lambda x: max(x, 0.0))  # an exercise without Triton: passes as anywhere
        assert core.RESULTS[-1].passed, core.RESULTS[-1].message
    """)
    launch = next(line for line in out.stdout.splitlines() if line.startswith("LAUNCH:"))
    assert "needs Linux: the Triton kernel add_kernel cannot run without Triton" in launch, launch
    assert "WSL2, the devcontainer or Colab" in launch, launch
    result = next(line for line in out.stdout.splitlines() if line.startswith("RESULT:"))
    assert result.startswith("RESULT: needs Linux:") and "Traceback" not in out.stdout, out.stdout
    assert "✗ vector_add failed" in out.stdout and "✓ relu passed" in out.stdout, out.stdout


def test_autotuned_and_course_kernels_stop_with_the_same_message():
    out = run_without_triton("""
        import course
        from course import flash_attention as fa, bitnet
        import triton

        @triton.autotune(configs=[triton.Config({"BLOCK": 16}, num_warps=4)], key=["n"])
        @triton.jit
        def tuned(x_ptr, n, BLOCK: "tl.constexpr"):
            pass

        p = bitnet.make_problem(1, 32, 32)
        q, k, v = fa.make_qkv(1, 32, 16, torch.float32)
        for call in (lambda: tuned[(1,)](None, 1), lambda: fa.flash_attention(q, k, v),
                     lambda: bitnet.ternary_matmul(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], 32)):
            try:
                call()
            except triton.TritonUnavailable as error:
                print("STOP:", str(error)[:60])
    """, system="Windows")
    stops = [line for line in out.stdout.splitlines() if line.startswith("STOP:")]
    assert len(stops) == 3 and all("needs Linux: the Triton kernel" in s for s in stops), out.stdout
    assert "tuned" in stops[0], stops


def test_linux_without_triton_asks_for_triton():
    out = run_without_triton("""
        import course, triton
        try:
            triton.jit(lambda x: x)[(1,)](1)
        except RuntimeError as error:
            print("LAUNCH:", error)
    """, system="Linux")
    assert "LAUNCH: needs Triton:" in out.stdout, out.stdout
    assert "pip install -r requirements.txt" in out.stdout, out.stdout


def test_torch_compile_still_works_next_to_the_stand_in():
    # torch's own probes (`try: import triton` at a module's top) must keep seeing no Triton.
    out = run_without_triton("""
        import course, triton
        assert not torch.utils._triton.has_triton_package()
        f = torch.compile(lambda x: torch.sin(x) * 2)
        print("COMPILED:", f(torch.ones(3)).tolist())
        assert sys.modules["triton"] is triton  # the stand-in is back after torch's modules ran
    """)
    assert "COMPILED: [1.68" in out.stdout, out.stdout


def test_with_triton_nothing_is_stood_in():
    pytest.importorskip("triton")
    import triton

    assert runtime.triton_available()
    assert not getattr(triton, "__course_stand_in__", False)
