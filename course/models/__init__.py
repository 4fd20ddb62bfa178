"""Models reused across notebooks: TinyGPT (built in notebook 01) and its training loop."""

from .tinygpt import Block, FeedForward, GPTConfig, KVCache, MultiHeadAttention, TinyGPT, sample_from_logits, \
    sinusoidal_positions
from .training import TrainHistory, evaluate_loss, load_pretrained, save_pretrained, train_tiny_lm, warmup_cosine

__all__ = ["Block", "FeedForward", "GPTConfig", "KVCache", "MultiHeadAttention", "TinyGPT", "TrainHistory",
           "evaluate_loss", "load_pretrained", "sample_from_logits", "save_pretrained", "sinusoidal_positions",
           "train_tiny_lm", "warmup_cosine"]
