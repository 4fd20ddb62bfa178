"""`make lab` starts JupyterLab on the course: fetch /lab and the notebook list over HTTP."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_make_lab_serves_the_notebooks():
    port, token = free_port(), "course-test-token"
    args = f"--no-browser --ServerApp.ip=127.0.0.1 --port={port} --ServerApp.token={token}"
    env = {k: v for k, v in os.environ.items() if k != "COURSE_HEADLESS"}
    server = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_ARGS={args}"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status, page = time.monotonic() + 120, None, ""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status, page = fetch(f"{base}/lab?token={token}")
                break
            except OSError:
                time.sleep(1)
        if status != 200:
            os.killpg(server.pid, signal.SIGTERM)
            log = server.communicate(timeout=20)[0].decode(errors="replace")[-3000:]
            pytest.fail(f"JupyterLab did not answer on {base} (make lab exited with {server.poll()}):\n{log}")
        assert "JupyterLab" in page
        _, listing = fetch(f"{base}/api/contents/notebooks?token={token}")
        names = {item["name"] for item in json.loads(listing)["content"]}
        assert "01_transformer.ipynb" in names
    finally:
        stop(server)


def stop(process: subprocess.Popen) -> None:
    """End make and the server it started (they share a process group)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
