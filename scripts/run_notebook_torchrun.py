"""Run a distributed notebook's code cells under torchrun, one process per rank.

The ZeRO, Megatron-LM and PaRO notebooks call ``dist.pool(WORLD)`` and ``ranks.run(fn)``. Under
torchrun, ``dist.pool`` joins the process group torchrun made instead of starting local
processes, and ``ranks.run(fn)`` calls ``fn`` in this process, so the notebook's code scales out
unchanged. This script executes every code cell in order in each rank, skipping the cells that
call an exercise check (they need the notebook's own 4 local ranks), with rank 0's output shown::

    torchrun --standalone --nproc-per-node 4 scripts/run_notebook_torchrun.py solutions/06_zero.ipynb
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \\
        scripts/run_notebook_torchrun.py solutions/06_zero.ipynb
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

CHECK_LINE = re.compile(r"^check\.\w+\(.*\)\s*$")  # a check cell: nothing but check.<name>(...) lines


def code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    sources = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if lines and all(CHECK_LINE.match(line) for line in lines):
            continue
        sources.append("\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return sources


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".ipynb"):
        print(__doc__)
        return 2
    path = Path(sys.argv[1]).resolve()
    if not path.is_file():
        print(f"error: no notebook at {path}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ:
        print("error: start this script with torchrun (see the usage above)", file=sys.stderr)
        return 2
    os.environ.setdefault("COURSE_HEADLESS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    rank = int(os.environ["RANK"])
    os.chdir(path.parent)  # notebooks run in their own folder
    namespace = {"__name__": "__main__"}
    quiet = open(os.devnull, "w") if rank != 0 else None
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
        for i, source in enumerate(code_cells(path)):
            exec(compile(source, f"<{path.name} code cell {i}>", "exec"), namespace)
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
    if rank == 0:
        print(f"ran {path.name} on {os.environ.get('WORLD_SIZE')} ranks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
