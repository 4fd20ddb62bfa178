"""Write the course map: a markdown table of every solution notebook with a thumbnail of a plot it makes.

    python scripts/make_course_map.py                 # docs/course_map.md and docs/img/<notebook>.png
    python scripts/make_course_map.py --for-readme    # also print the table with links from the repo root

Nothing is executed: each thumbnail is cut from an ``image/png`` output the solution notebook
already stores (the cell named in ``PLOT_CELLS``; for a notebook not listed there, its last stored
plot; for one without any plot yet, the row says so). The other columns are read from the notebook
too: the title and ``**Paper**``/``**Time**`` lines of its first cell, the exercise titles (what
you build) and its code (Triton kernels, ranks) for the hardware it needs. A new notebook in
solutions/ therefore appears after re-running this script, with no edit here; add it to
``PLOT_CELLS`` to choose its picture.

Each row also links the student notebook on Colab, which opens notebooks straight from GitHub. The
repository's GitHub path is not known here, so it is the one constant ``GITHUB_REPO``: set
``COURSE_GITHUB_REPO=owner/name`` (and ``COURSE_GITHUB_BRANCH``, default ``main``) when running this.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from course.grading import exercises as ex  # noqa: E402

#: owner/name of the course on GitHub, for the Colab links; a placeholder until the repository is public
GITHUB_REPO = os.environ.get("COURSE_GITHUB_REPO", "OWNER/papers-to-kernels")
GITHUB_BRANCH = os.environ.get("COURSE_GITHUB_BRANCH", "main")

THUMBNAIL = (320, 220)  # max width, height in pixels: small enough for a table cell

#: notebook -> id of the cell whose stored plot represents it (the notebook's central figure)
PLOT_CELLS = {
    "00_start_here": "s26",                # your Triton kernel against torch
    "01_transformer": "c30",               # training loss: where the LayerNorm goes
    "02_flash_attention": "fa-io-plot",    # IO model: standard vs tiled attention
    "03_lora": "lora-19",                  # fine-tuning TinyGPT: full vs LoRA
    "04_bitnet": "bitnet-22",              # BitNet vs fp TinyGPT loss
    "05_speculative_decoding": "bench-plot",  # speed-up over plain decoding vs gamma
    "06_zero": "z09",                      # model states per device, 1T parameters
    "07_megatron": "m37",                  # the planner's TFLOP/s per GPU
    "08_paro": "p31",                      # PaRO-DP speed-up over ZeRO-3
    "10_grpo": "grpo42",                   # held-out accuracy over the full GRPO run (from CSV)
    "11_autogen": "ag11-29",               # success rate of the agent set-ups
    "12_metagpt": "mg12-29",               # pass rate with and without SOPs
    "13_generative_agents": "ga13-29",     # the invitation spreading
    "14_swe_agent": "swe14-31",            # resolve rate: ACI vs shell
    "16_reflexion": "rx16-24",             # pass@1 over Reflexion trials
    "17_mira": "mi17-22",                  # Q-learning in three rooms, mean over seeds
}


@dataclass
class Row:
    number: str
    stem: str
    title: str
    paper: str
    build: str
    time: str
    hardware: str
    image: str | None  # file name under docs/img, or None when the notebook stores no plot yet
    plot_cell: str | None


# --- reading a notebook ------------------------------------------------------------------------------


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def title_of(nb, stem: str) -> str:
    """``# 02 · FlashAttention: from ...`` -> ``FlashAttention``."""
    first = ex.source(nb.cells[0]).splitlines()[0] if nb.cells else ""
    match = re.match(r"#\s*\d+\s*·\s*(.+)", first)
    name = match.group(1) if match else stem.split("_", 1)[-1].replace("_", " ")
    return name.split(":")[0].strip()


def field(header: str, name: str) -> str:
    """The text after ``**Name:**`` or ``**Name.**`` up to the next bold field."""
    match = re.search(rf"\*\*{name}s?[:.]\*\*(.*?)(?=\*\*[A-Z][^*]*[:.]\*\*|\Z)", header, re.DOTALL)
    return _flat(match.group(1)) if match else ""


def paper_of(header: str) -> str:
    """First author et al., *title*, venue and year, arXiv links; '—' when the notebook has no paper."""
    text = field(header, "Paper")
    ids = list(dict.fromkeys(re.findall(r"\b(\d{4}\.\d{4,5})\b", text)))
    if not text or not ids:
        return "—"
    papers = []
    for entry in re.split(r"(?:^|\s)\*\s", text) if text.lstrip().startswith("* ") else [text]:
        titles = re.findall(r"\*([^*]+?)\.?\*", entry)
        if not titles:
            continue
        authors = entry[:entry.index("*" + titles[0])].strip(" .,")
        first = authors.split(",")[0].strip()
        who = (first.split()[-1] + (" et al." if "," in authors else "")) if first else ""
        after = entry[entry.index(titles[0]) + len(titles[0]):]
        venue = re.search(r"([A-Z][A-Za-z]*\s+)?(19|20)\d\d", after.split("[")[0].split("arXiv")[0])
        paper_ids = re.findall(r"\b(\d{4}\.\d{4,5})\b", entry)[:1]
        link = f" ([{paper_ids[0]}](https://arxiv.org/abs/{paper_ids[0]}))" if paper_ids else ""
        parts = [p for p in (who, f"*{titles[0]}*", venue.group(0).strip() if venue else "") if p]
        papers.append(", ".join(parts) + link)
    return "; ".join(papers) or "—"


def time_of(header: str) -> str:
    text = field(header, "Time")
    match = re.match(r"(?:about\s+)?(.+?)(?:[.;](?:\s|$)|$)", text, re.IGNORECASE)  # "2.5 hours. On a..."
    return match.group(1).strip() if match else "?"


def hardware_of(nb) -> str:
    code = "\n".join(ex.source(c) for c in nb.cells if c.get("cell_type") == "code")
    if "@triton.jit" in code or "course.flash_attention" in code:
        return "CPU (Triton interpreter); GPU for speed"
    if re.search(r"\branks\.run\b|torch\.distributed|\bdist\.", code):
        return "CPU (4 gloo ranks stand in for GPUs)"
    if "course.llm" in code or "from course import llm" in code:
        return "CPU (offline LLM backend; a real LLM optional)"
    return "CPU"


def build_of(nb, stem: str) -> str:
    """What you build: the notebook's exercise titles."""
    try:
        manifest = ex.parse_exercises(nb, stem)
    except ex.NotebookFormatError:  # a notebook still being written: its row still appears
        return "—"
    titles = [e.title for e in manifest.exercises]
    if not titles:
        return "—"
    return "; ".join(titles)


def stored_plot(nb, cell_id: str | None) -> tuple[bytes, str] | None:
    """(png bytes, cell id) of the chosen cell's stored plot; else of the notebook's last stored plot."""
    def pngs(cell):
        return [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]

    cells = [c for c in nb.cells if c.get("cell_type") == "code" and pngs(c)]
    chosen = [c for c in cells if c.get("id") == cell_id] or cells[-1:]
    if not chosen:
        return None
    data = pngs(chosen[0])[0]
    return base64.b64decode("".join(data) if isinstance(data, list) else data), chosen[0].get("id")


def thumbnail(png: bytes, target: Path) -> None:
    """Shrink a stored plot to at most THUMBNAIL pixels, keeping its aspect ratio, and save it.

    Pillow is always there with matplotlib (a dependency of it; matplotlib's own imread uses it), so
    there is no second code path.
    """
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail(THUMBNAIL, Image.LANCZOS)
    image.save(target, format="PNG", optimize=True)


# --- the table ------------------------------------------------------------------------------------------


def rows(solutions: Path, img_dir: Path) -> list[Row]:
    """One row per solution notebook (sorted by name); writes each thumbnail to img_dir."""
    if not solutions.is_dir():
        raise FileNotFoundError(f"solutions: no such folder {solutions}")
    result = []
    for path in sorted(solutions.glob("*.ipynb")):
        stem = path.stem
        nb = nbformat.read(str(path), as_version=4)
        header = ex.source(nb.cells[0]) if nb.cells else ""
        plot = stored_plot(nb, PLOT_CELLS.get(stem))
        image, plot_cell = None, None
        if plot is not None:
            png, plot_cell = plot
            image = f"{stem}.png"
            thumbnail(png, img_dir / image)
        result.append(Row(stem.split("_", 1)[0], stem, title_of(nb, stem), paper_of(header), build_of(nb, stem),
                          time_of(header), hardware_of(nb), image, plot_cell))
    return result


def colab_url(stem: str, repo: str = GITHUB_REPO, branch: str = GITHUB_BRANCH) -> str:
    """Colab opens a notebook from GitHub by its path: the student version, outputs cleared."""
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{stem}.ipynb"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(all_rows: list[Row], *, notebooks_link: str, img_link: str) -> str:
    """The markdown table; links are made with the given prefixes (they differ for docs/ and the README)."""
    lines = ["| # | notebook | paper | what you build | time to complete | CPU/GPU needs | image | Colab |",
             "|---|---|---|---|---|---|---|---|"]
    for r in all_rows:
        image = (f'<img src="{img_link}{r.image}" width="160" alt="a plot from {r.stem}">' if r.image
                 else "no plot yet")
        lines.append(f"| {r.number} | [{_cell(r.title)}]({notebooks_link}{r.stem}.ipynb) | {_cell(r.paper)} | "
                     f"{_cell(r.build)} | {_cell(r.time)} | {_cell(r.hardware)} | {image} | "
                     f"[Open in Colab]({colab_url(r.stem)}) |")
    return "\n".join(lines) + "\n"


def write(solutions: Path, docs: Path) -> list[Row]:
    """docs/course_map.md and docs/img/<notebook>.png; returns the rows."""
    all_rows = rows(solutions, docs / "img")
    text = ("# Course map\n\n"
            "Generated by `python scripts/make_course_map.py` from the solution notebooks (each picture is a\n"
            "plot the notebook makes, as stored in it); re-run it after adding or changing a notebook.\n"
            f"The Colab links open the student notebooks from GitHub `{GITHUB_REPO}` (branch `{GITHUB_BRANCH}`;\n"
            "`COURSE_GITHUB_REPO=owner/name` sets it).\n\n"
            + table(all_rows, notebooks_link="../notebooks/", img_link="img/"))
    (docs / "course_map.md").write_text(text)
    return all_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solutions", type=Path, default=REPO / "solutions")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="writes course_map.md and img/ here")
    parser.add_argument("--for-readme", action="store_true",
                        help="also print the table with links relative to the repository root")
    args = parser.parse_args(argv)
    all_rows = write(args.solutions, args.docs)
    for r in all_rows:
        print(f"{r.stem:28s} {'img/' + r.image + ' (cell ' + str(r.plot_cell) + ')' if r.image else 'no plot yet'}")
    print(f"wrote {args.docs / 'course_map.md'} ({len(all_rows)} notebooks)")
    if args.for_readme:
        print()
        print(table(all_rows, notebooks_link="notebooks/", img_link="docs/img/"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
