"""Put the Colab set-up lines at the top of every solution notebook's first code cell, and an
"Open in Colab" link (with what runs where, for the Triton notebooks) at the end of its title cell.

    python scripts/colab_setup_cell.py            # rewrite solutions/*.ipynb, then: python -m course build
    python scripts/colab_setup_cell.py --check    # exit 1 if a solution lacks the current lines

On Google Colab the course package is not installed, so the first cell installs it, at a pinned
release of the course's repository, before ``import course``; everywhere else the lines do nothing
(no output, so stored outputs do not change). The repository path is the course map's constant
(``COURSE_GITHUB_REPO``, a placeholder until the repository is public); the pinned ref is the
package's version tag (``COURSE_COLAB_REF`` overrides it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat
from make_course_map import GITHUB_REPO, colab_url

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
REF = os.environ.get("COURSE_COLAB_REF", f"v{VERSION}")
BEGIN, END = "# --- Colab set-up (scripts/colab_setup_cell.py) ---", "# --- end of Colab set-up ---"
LINK_BEGIN, LINK_END = "<!-- where it runs (scripts/colab_setup_cell.py) -->", "<!-- end -->"
TRITON_NOTEBOOKS = ("00", "02", "03", "04")  # as course.runtime.TRITON_NOTEBOOKS (not imported: no torch needed)


def setup_lines(repo: str = GITHUB_REPO, ref: str = REF) -> str:
    return (f"{BEGIN}\n"
            "import sys\n\n"
            "if \"google.colab\" in sys.modules:  # only on Colab: install the course (Colab's own torch and Triton stay)\n"
            "    import subprocess\n\n"
            "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
            f"                    \"course @ git+https://github.com/{repo}@{ref}\"], check=True)\n"
            f"{END}\n")


def with_setup(source: str, lines: str) -> str:
    """``source`` with the set-up block at its top, replacing an older block if there is one."""
    if BEGIN in source and END in source:
        start, stop = source.index(BEGIN), source.index(END) + len(END)
        source = source[:start] + source[stop:].lstrip("\n")
    return lines + "\n" + source


def where_it_runs(stem: str) -> str:
    """The title cell's last lines: the Colab link, and for Triton notebooks what runs on which machine."""
    text = f"[Open in Colab]({colab_url(stem)}) (the first code cell installs the course there)."
    if stem.split("_", 1)[0] in TRITON_NOTEBOOKS:
        text += ("\n\n**Where it runs.** Linux: everything (Triton kernels in the CPU interpreter without a GPU). "
                 "macOS and Windows: every PyTorch cell; a cell that launches a Triton kernel stops with a message, "
                 "because Triton ships for Linux only (use WSL2, the devcontainer or Colab). Colab's free T4 "
                 "(sm_75): Triton 3.9 gives it no tensor-core instructions for any dtype (below sm_80 `tl.dot` "
                 "compiles to ordinary FMAs) and 64 KiB of shared memory per block, so the course autotunes over "
                 "small T4 tiles that the compile test (tests/test_gpu_compile.py) compiled there without spills "
                 "(compiled on a CPU; no T4 has run them yet: a CPU runtime runs everything).")
        if stem.startswith("04"):
            text += (" The packed ternary kernel of this notebook does not compile for sm_75 at all (Triton's FMA "
                     "path cannot take int8 `tl.dot` operands): on a T4 it stops with a message saying so; use a "
                     "CPU runtime or an sm_80+ GPU for those cells.")
    return f"{LINK_BEGIN}\n{text}\n{LINK_END}"


def with_link(source: str, block: str) -> str:
    """The title cell with ``block`` at its end, replacing an older block if there is one."""
    if LINK_BEGIN in source and LINK_END in source:
        start, stop = source.index(LINK_BEGIN), source.index(LINK_END) + len(LINK_END)
        source = source[:start].rstrip("\n") + source[stop:]
    return source.rstrip("\n") + "\n\n" + block


def first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report solutions whose block is missing or stale")
    args = ap.parse_args()
    lines, stale = setup_lines(), []
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        cell, title = first_code_cell(nb), nb.cells[0]
        wanted, wanted_title = with_setup(cell.source, lines), with_link(title.source, where_it_runs(path.stem))
        if cell.source != wanted or title.source != wanted_title:
            stale.append(path.name)
            if not args.check:
                cell.source, title.source = wanted, wanted_title
                nbformat.write(nb, str(path))
    verb = "lack the current Colab set-up" if args.check else "updated"
    print(f"{len(stale)} solution(s) {verb}: {', '.join(stale) or '-'}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
