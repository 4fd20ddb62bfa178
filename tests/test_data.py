"""course.data: the offline corpus, tokenizers, batches and synthetic tasks."""

import pytest
import torch

from course import data


def test_corpus_is_the_same_ascii_text_on_every_python():
    text = data.corpus()
    assert len(text) == 465_177  # the snapshot, with typographic characters folded to ASCII
    assert text.startswith('The "assert" statement')
    assert set(text) <= set(data.CharTokenizer.alphabet)


def test_char_tokenizer_round_trips_and_rejects_unknown_characters():
    tok = data.CharTokenizer()
    assert tok.vocab_size == 96
    assert tok.decode(tok.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    with pytest.raises(ValueError, match="outside the tokenizer's ASCII alphabet"):
        tok.encode("naïve")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([96])


def test_bpe_round_trips_and_compresses_the_corpus():
    text = data.corpus()[:50_000]
    bpe = data.BPETokenizer.train(text, vocab_size=300)
    assert bpe.vocab_size == 300
    ids = bpe.encode(text[:5000])
    assert bpe.decode(ids) == text[:5000]
    assert len(ids) < 0.8 * 5000  # 44 merges already shorten English by more than a fifth
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        data.BPETokenizer.train(text, 100)


def test_bpe_training_is_deterministic():
    text = data.corpus()[:20_000]
    assert data.BPETokenizer.train(text, 280).merges == data.BPETokenizer.train(text, 280).merges


def test_lm_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(100)
    x, y = data.lm_batch(tokens, block_size=8, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="need more than block_size"):
        data.lm_batch(torch.arange(5), block_size=8, batch_size=1)


def test_synthetic_tasks_are_deterministic_and_verifiable():
    a = data.arithmetic_problems(50, seed=3)
    assert a == data.arithmetic_problems(50, seed=3)
    for ex in a:
        assert str(eval(ex.prompt[:-1])) == ex.answer  # noqa: S307 - our own generated arithmetic
    assert data.is_correct(a[0], a[0].answer + "\nmore text") and not data.is_correct(a[0], "x")
    s = data.sort_task(5, seed=1)[0]
    assert s.answer == "".join(sorted(s.prompt[5:-1]))
    assert data.copy_task(3, seed=1)[0].answer == data.copy_task(3, seed=1)[0].prompt[5:-1]
    with pytest.raises(ValueError, match="n must be a positive int"):
        data.arithmetic_problems(0, seed=1)
    with pytest.raises(ValueError, match="ops must be"):
        data.arithmetic_problems(3, seed=1, ops="/")
