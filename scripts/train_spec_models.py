"""Train the committed target/draft pair of notebook 05 (speculative decoding).

    python scripts/train_spec_models.py             # both models (about 9 min on 2 idle CPU cores)
    python scripts/train_spec_models.py draft       # only the draft (about 2 min)
    python scripts/train_spec_models.py target 2000 # only the target, with a step count

Writes course/models/weights/spec-target-char.{pt,json} and spec-draft-char.{pt,json}; the
notebook loads them with ``course.models.load_pretrained``.

Why these sizes: on a CPU at batch 1, a TinyGPT forward pass costs mostly a fixed amount of
Python and operator-launch overhead per layer, almost independent of d_model. So the cost ratio
c = t(draft) / t(target) is roughly the ratio of layer counts, and the target is deep (24 layers,
679k parameters) while the draft has 2 layers (106k parameters). The target is also narrow
(d_model 48): the extra work of scoring gamma + 1 tokens instead of one grows with d_model, and
the paper's speed-up formula assumes it is free. Measured on the benchmark of notebook 05 (2 cores,
1 thread): a verification call over 5-6 tokens costs 1.07-1.09x a one-token call with d_model 48,
1.15-1.20x with d_model 64 (the first target we trained), where the measured speed-up landed
14-17% below the formula, most of it that excess (5-10% once verification was priced at its
cost). The draft keeps d_model 64: width hardly changes its cost but buys accuracy (validation
loss 1.325 at d_model 64, 1.513 at 48), and acceptance depends on it. A 2-layer draft rather than
a 1-layer one: it costs a little more per call but is accepted more often. (Also tried and
dropped: a 12-layer, d_model 128 target and a 1-layer draft.)

Both models are character-level, trained on the same corpus (course.data.corpus, 90% train split)
with the same tokenizer, so their vocabularies match. Weights are stored in float16 to keep the
files small; the model is rounded to float16 *before* its validation loss is measured, so the
recorded loss is the loss of exactly the weights that load_pretrained returns (in float32).
"""
import sys

import torch

from course import data
from course.models import GPTConfig, evaluate_loss, save_pretrained, train_tiny_lm

VOCAB = data.CharTokenizer().vocab_size
MODELS = {
    # name: (config, steps, batch size, peak learning rate)
    "spec-target-char": (GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=24, n_head=2, d_model=48), 2000, 32, 3e-3),
    "spec-draft-char": (GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=2, n_head=2, d_model=64), 2000, 32, 3e-3),
}
ALIASES = {"target": "spec-target-char", "draft": "spec-draft-char"}


def train(name: str, steps: int | None = None) -> None:
    config, default_steps, batch_size, lr = MODELS[name]
    steps = steps or default_steps
    model, history = train_tiny_lm(config, steps=steps, batch_size=batch_size, lr=lr, warmup=100, seed=0,
                                   eval_every=250)
    with torch.no_grad():  # round to what the float16 file stores, then measure that model
        for p in model.parameters():
            p.copy_(p.half().float())
    tokens = data.CharTokenizer().encode(data.corpus())
    val_loss = evaluate_loss(model, data.train_val_split(tokens)[1])
    path = save_pretrained(model.half(), name, info={
        "trained_by": "scripts/train_spec_models.py",
        "stored_dtype": "float16",
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": 0,
        "parameters": model.num_parameters(),
        "final_val_loss": round(val_loss, 4),
        "train_seconds": round(history.seconds, 1),
    })
    print(f"saved {path}: {model.num_parameters():,} parameters, val loss {val_loss:.3f} after {steps} steps "
          f"in {history.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    if which not in ("both", *ALIASES):
        raise SystemExit(f"usage: train_spec_models.py [both|target|draft] [steps]; got {which!r}")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
    for key in ("draft", "target") if which == "both" else (which,):
        train(ALIASES[key], steps)
