"""requirements.txt resolves, from wheels alone, on every OS a learner may bring.

A learner's `make lab` runs pip on their own machine, so a pin without a wheel for macOS or Windows
(as `triton` was, before it got its Linux-only marker) breaks the course there while CI on Linux stays
green. `uv pip compile --python-platform` resolves for another platform without being on it, reading
only package metadata from the registry: a few seconds per platform.

uv comes from PyPI (pinned in requirements.txt). Without uv or without the registry the test skips
and says which; an unsatisfiable resolution fails with uv's explanation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = "3.11"  # the course's CI Python (.github/workflows/ci.yml, environment.yml)
BUDGET_S = 100   # all platforms together: this test must stay short

#: uv platform -> environment for the resolution. torch 2.13.0's macOS wheel is macosx_14_0_arm64,
#: and uv assumes macOS 13 unless told, so the Mac is resolved as macOS 14 (Sonoma), as a learner has.
PLATFORMS = {
    "x86_64-unknown-linux-gnu": {},
    "aarch64-unknown-linux-gnu": {},
    "aarch64-apple-darwin": {"MACOSX_DEPLOYMENT_TARGET": "14.0"},
    "x86_64-pc-windows-msvc": {},
}

#: words in uv's error when the registry, not the requirements, is the problem
UNREACHABLE = ("Failed to fetch", "error sending request", "dns error", "Connection refused", "timed out",
               "Could not connect", "network")


def uv_binary() -> str | None:
    """uv from the `uv` package in this environment (requirements.txt), else the one on PATH."""
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def resolve(uv: str, platform: str, extra_env: dict[str, str], timeout: float) -> str:
    """uv's pinned list for one platform; skips when the registry cannot be reached in time."""
    env = {**os.environ, "UV_HTTP_TIMEOUT": "20", **extra_env}
    cmd = [uv, "pip", "compile", str(REPO / "requirements.txt"), "--python-platform", platform,
           "--python-version", PYTHON, "--only-binary", ":all:", "--no-header", "--quiet"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.skip(f"uv did not finish resolving for {platform} within the test's {BUDGET_S} s budget "
                    "(a slow or unreachable registry)")
    if out.returncode != 0:
        if "No solution found" not in out.stderr and any(w in out.stderr for w in UNREACHABLE):
            pytest.skip(f"the package registry is not reachable from here: {out.stderr.strip()[-300:]}")
        pytest.fail(f"requirements.txt does not resolve for {platform}:\n{out.stderr}")
    return out.stdout


def pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE))


def test_requirements_resolve_for_linux_macos_and_windows():
    uv = uv_binary()
    if uv is None:
        pytest.skip("uv is not installed (pip install uv, or make setup: it is in requirements.txt)")
    deadline = time.monotonic() + BUDGET_S
    for platform, extra_env in PLATFORMS.items():
        resolved = pins(resolve(uv, platform, extra_env, timeout=max(1.0, deadline - time.monotonic())))
        assert resolved.get("torch") == "2.13.0", (platform, resolved.get("torch"))
        # Triton has Linux wheels only: required there, absent elsewhere (the marker in requirements.txt)
        assert ("triton" in resolved) == ("linux" in platform), (platform, sorted(resolved))
