"""Seeded synthetic inputs, no model: random attribute systems and similarities, JPEG files, a word tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from systems import AttributeSystem, Group


def random_system(n_classes, n_groups, k, seed=0) -> AttributeSystem:
    """``n_classes`` classes, ``n_groups`` groups of ``k`` options; each class takes one seeded option per group."""
    rng = np.random.default_rng(seed)
    groups = tuple(Group(f"g{g}", "{}", tuple(f"o{g}_{i}" for i in range(k))) for g in range(n_groups))
    rules = tuple(tuple(frozenset([int(rng.integers(k))]) for _ in range(n_groups)) for _ in range(n_classes))
    return AttributeSystem(name=f"random_{n_classes}x{n_groups}x{k}", classes=tuple(f"c{i}" for i in range(n_classes)),
                           groups=groups, rules=rules)


def random_sims(system: AttributeSystem, n: int, seed: int = 0) -> np.ndarray:
    """(n, Q) CLIP-like random cosine similarities: N(0.2, 0.03²)."""
    return np.random.default_rng(seed).normal(0.2, 0.03, size=(n, system.q_total))


def make_jpegs(folder: str | os.PathLike, n: int, size: int = 300, seed: int = 0) -> list[str]:
    """``n`` JPEG files of ``size`` x ``size`` smooth random images in ``folder`` (created)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 10 + 1, size // 10 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)  # compresses like a photo
        p = folder / f"img{i:05d}.jpg"
        img.save(p, quality=90)
        out.append(str(p))
    return out


def word_tokenizer(words: list[str], max_len: int = 77):
    """A word-level fast tokenizer with [BOS] ... [EOS], built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_len)
