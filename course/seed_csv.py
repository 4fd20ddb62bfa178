"""Combine CSVs of one training script run as one process per seed (notebook 10's scripts).

A script that reseeds everything at the start of each seed gives the same rows for a seed whether it
runs alone or after others, so its seeds can run as separate processes, concurrently, and be merged.
"""

from __future__ import annotations

from pathlib import Path

from . import bench

_MACHINE_TAGS = ("device", "cpu_model", "torch_cpu_capability", "python", "torch", "date", "triton", "cuda")


def merge_seed_csvs(paths: list[str | Path], out: str | Path) -> Path:
    """Rows of every part in order; tags of the first part with the parts' seeds, per-seed seconds and
    their sum. Refuses parts run with different configs or scripts, or a seed in two parts."""
    if len(paths) < 2:
        raise ValueError(f"need at least two CSVs to merge, got {paths}")
    parts = [bench.load_csv(p) for p in paths]
    for key in ("script", "config", "threads"):
        values = {tags.get(key) for _, tags in parts}
        if len(values) != 1:
            raise ValueError(f"the parts differ in {key!r}: {sorted(map(str, values))}")
    machines = {tuple(tags.get(k) for k in _MACHINE_TAGS if k != "date") for _, tags in parts}
    if len(machines) != 1:
        raise ValueError(f"the parts were measured on different machines or versions: {machines}")
    seeds = [s for _, tags in parts for s in tags["seeds"].split(",")]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears in more than one part: {seeds}")
    per_seed = [x for _, tags in parts for x in tags["seconds_per_seed"].split(",")]
    tags = {k: v for k, v in parts[0][1].items() if k not in _MACHINE_TAGS}
    tags.update(seeds=",".join(seeds), seconds_per_seed=",".join(per_seed),
                seconds_total=str(sum(int(x) for x in per_seed)),
                processes=f"{len(parts)} run concurrently (seeds {' | '.join(t['seeds'] for _, t in parts)}), merged")
    return bench.save_csv([row for rows, _ in parts for row in rows], out, tags=tags)


def add_merge_option(parser) -> None:
    """``--merge a.csv,b.csv,...`` on a script's argparse parser (see :func:`merged`)."""
    parser.add_argument("--merge", default="", help="comma-separated CSVs of this script (e.g. one seed each, run "
                        "as separate processes) to combine into --out instead of training")


def merged(args) -> bool:
    """With ``--merge``, combine the listed CSVs into ``args.out`` and return True (the script stops there)."""
    if not args.merge:
        return False
    print("wrote", merge_seed_csvs(args.merge.split(","), args.out))
    return True
