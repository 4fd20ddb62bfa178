"""Notebook 03's fine-tuning results over seeds: the rank sweep, full fine-tuning, two adapters, and
the low-rank analysis, saved as CSV for the notebook to plot with their spread.

    COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/seeds_lora.py     # 184 s CPU (1059 s wall on 2 shared, busy cores)

The committed CSVs were made by exactly this command on an AMD EPYC (AVX2, torch 2.13.0, 1 thread);
on the same processor and settings it reproduces them exactly; elsewhere the numbers may differ
(float summation order) as another seed would, which is why the notebook reads the spread.

It calls the solution notebook's own code (``LoRALinear``, ``inject_lora``, ``task_tensors``,
``finetune``, ``evaluate``, ``subspace_similarity``: see scripts/notebook_defs.py) with the notebook's
data, steps, learning rates and alpha. A seed sets the adapters' random init (``lora_A``) and the
batch order; the data sets are the notebook's (seeds 1 to 4). Per seed it trains full fine-tuning,
LoRA at ranks 1 to 64 on the sort task, and a rank-8 adapter on the descending task, and writes

* course/results/lora_rank_sweep.csv: validation loss and exact match of every run;
* course/results/lora_adapters.csv: the sort and desc rank-8 adapters on both tasks;
* course/results/lora_low_rank.csv: the share of the full update's energy in its top 8 directions,
  and the subspace similarity phi(1, 1), phi(8, 8) between the rank-8 and rank-64 updates.

``--quick`` runs one seed for 5 steps and writes nothing (a smoke test).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import course
from course import bench, data, spread
from course.models import load_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_defs  # noqa: E402

QUICK = "--quick" in sys.argv
SEEDS = [0] if QUICK else [0, 1, 2, 3, 4]
STEPS = 5 if QUICK else 100                 # the notebook's STEPS
RANKS, ALPHA = (1, 2, 4, 8, 16, 32, 64), 16.0
LR_FULL, LR_LORA = 1e-3, 1e-2
K = 8                                       # top directions for the energy share and phi
RESULTS = Path(__file__).resolve().parents[1] / "course" / "results"

nb = notebook_defs.load("solutions/03_lora.ipynb", tokenizer=data.CharTokenizer(), K=K)
pretrained = load_pretrained("tinygpt-char")
SORT_TRAIN, SORT_VAL = nb["task_tensors"](data.sort_task, 2000, seed=1), nb["task_tensors"](data.sort_task, 256, seed=2)
desc_task = nb["descending"](data.sort_task)
DESC_TRAIN, DESC_VAL = nb["task_tensors"](desc_task, 2000, seed=3), nb["task_tensors"](desc_task, 256, seed=4)


def train(seed, rank, train_split, val_split):
    """The notebook's recipe: seed, load, (inject), finetune; rank 0 means full fine-tuning."""
    course.seed_everything(seed)
    model = load_pretrained("tinygpt-char")
    if rank:
        nb["inject_lora"](model, r=rank, alpha=ALPHA)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list(model.parameters())
    nb["finetune"](model, params, train_split, val_split, steps=STEPS, lr=LR_LORA if rank else LR_FULL, seed=seed)
    return model, sum(p.numel() for p in params)


def update(model, name, rank):
    """Delta W of one projection: fine-tuned minus pretrained (full) or scaling * B A (LoRA)."""
    if rank == 0:
        return (dict(model.named_parameters())[name + ".weight"]
                - dict(pretrained.named_parameters())[name + ".weight"]).detach()
    layer = dict(model.named_modules())[name]
    return (layer.scaling * layer.lora_B @ layer.lora_A).detach()


def top(m, k=K):
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    return u[:, :k] * s[:k]


start, cpu_start = time.perf_counter(), time.process_time()
sweep, adapters, low_rank = [], [], []
for seed in SEEDS:
    models = {}
    for rank in (0, *RANKS):
        model, trainable = train(seed, rank, SORT_TRAIN, SORT_VAL)
        loss, exact = nb["evaluate"](model, SORT_VAL)
        name = f"r={rank}" if rank else "full"
        models[rank] = model
        sweep.append({"run": name, "rank": rank, "trainable": trainable, "seed": seed,
                      "val_loss": round(loss, 5), "exact": round(exact, 5)})
    desc, _ = train(seed, 8, DESC_TRAIN, DESC_VAL)
    for adapter, model in (("sort", models[8]), ("desc", desc)):
        (sort_loss, sort_exact), (desc_loss, desc_exact) = nb["evaluate"](model, SORT_VAL), nb["evaluate"](model, DESC_VAL)
        adapters.append({"adapter": adapter, "seed": seed, "sort_loss": round(sort_loss, 5),
                         "sort_exact": round(sort_exact, 5), "desc_loss": round(desc_loss, 5),
                         "desc_exact": round(desc_exact, 5)})
    for proj in ("q_proj", "v_proj"):
        names = [f"blocks.{i}.attn.{proj}" for i in range(pretrained.config.n_layer)]
        spectra = torch.stack([torch.linalg.svdvals(update(models[0], n, 0)) for n in names])
        energy = ((spectra[:, :K] ** 2).sum(1) / (spectra ** 2).sum(1)).mean().item()
        pairs = [(top(update(models[8], n, 8)), top(update(models[64], n, 64))) for n in names]
        phi = {(i, j): sum(nb["subspace_similarity"](a, b, i, j) for a, b in pairs) / len(pairs)
               for i, j in ((1, 1), (K, K))}
        low_rank.append({"proj": proj, "seed": seed, "energy_top8": round(energy, 5),
                         "phi_1_1": round(phi[1, 1], 5), "phi_8_8": round(phi[K, K], 5)})
    print(f"seed {seed} done at {time.perf_counter() - start:.0f} s", flush=True)

seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
for run, values in spread.by_group(sweep, "run", "val_loss").items():
    print(f"{run:<5} val loss {spread.spread(values).format()}")
print(f"total {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU")
if not QUICK:
    tags = {"script": "scripts/seeds_lora.py", "command": "COURSE_HEADLESS=1 COURSE_THREADS=1 python scripts/seeds_lora.py",
            "seeds": " ".join(map(str, SEEDS)), "wall_seconds": f"{seconds:.0f}", "cpu_seconds": f"{cpu_seconds:.0f}",
            "config": (f"notebook 03 recipe: tinygpt-char, sort task (2000 train / 256 val, length 6), {STEPS} steps, "
                       f"AdamW batch 16, lr full {LR_FULL:g} / LoRA {LR_LORA:g}, alpha {ALPHA:g}, LoRA on q_proj and v_proj, "
                       f"ranks {' '.join(map(str, RANKS))}")}
    for rows, name in ((sweep, "lora_rank_sweep.csv"), (adapters, "lora_adapters.csv"), (low_rank, "lora_low_rank.csv")):
        print("wrote", bench.save_csv(rows, RESULTS / name, tags=tags))
