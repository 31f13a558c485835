"""Text batches without stalls: bucketed prompt shapes, warm-up, and the eager-or-lazy prompt policy.

On a GPU the text tower's forward is launch-bound (a few ms for a dozen short prompts),
but every new (rows, tokens) shape pays a first-call cost (tens of ms: kernel selection,
allocator growth). Lazy group asks come in many shapes (K_g prompts of varying length),
so each new group could stall. This module keeps the shapes few:

- **length buckets**: token ids are right-padded to the smallest of
  :data:`LENGTHS` (8, 16, 32, 64) or the model's maximum that holds the longest prompt;
- **row buckets**: the batch is padded with copies of its first row to the smallest of
  8, 16, 32, ... (up to the text batch size) that holds it; the copies are dropped.

Padding on the right does not change an embedding where the model masks padded keys
and pools a token at or before the end of the real text: CLIP (causal attention,
pools the EOS token: the first EOS, or the argmax id in legacy configs, where the EOS id
is the largest), MiniLM (the offline model: mean over the attention mask). SigLIP is
padded to its maximum length already (it pools the last position, so its length is
never bucketed; only its rows are). jina-clip tokenises inside its own ``encode_text``,
so it is not bucketed. Each encoder that buckets checks this once, on its first
bucketed batch (:func:`padding_is_invisible`); a model where padding shows turns
bucketing off for itself, with a :class:`engine.encoders.base.BucketWarning`.

Settings (``EncoderSpec``): ``text_buckets``, ``warm_up`` ("auto": on CUDA only),
``eager_prompts`` ("auto": :func:`prompt_policy`), ``compile_text`` (off).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: token lengths prompts are padded to (capped, and completed, by the model's maximum)
LENGTHS = (8, 16, 32, 64)
#: the smallest row bucket; smaller batches are padded to it
MIN_ROWS = 8
#: "auto" eager prompts: on CUDA, embed the whole system at load when it fits in this many text batches
EAGER_MAX_BATCHES = 2
SWITCHES = ("auto", "on", "off")
PROMPT_MODES = ("auto", "eager", "lazy")


def length_buckets(max_length: int) -> tuple[int, ...]:
    """The token lengths a model's prompts are padded to: :data:`LENGTHS` below ``max_length``, then it.

    >>> length_buckets(77)
    (8, 16, 32, 64, 77)
    >>> length_buckets(32)
    (8, 16, 32)
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length == {max_length!r}, must be a whole number >= 1")
    return tuple(n for n in LENGTHS if n < max_length) + (max_length,)


def row_buckets(batch_size: int) -> tuple[int, ...]:
    """The batch sizes a text batch is padded to: :data:`MIN_ROWS`, doubling, below ``batch_size``, then it.

    >>> row_buckets(32)
    (8, 16, 32)
    >>> row_buckets(100)
    (8, 16, 32, 64, 100)
    >>> row_buckets(4)
    (4,)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size == {batch_size!r}, must be a whole number >= 1")
    out, n = [], MIN_ROWS
    while n < batch_size:
        out.append(n)
        n *= 2
    return tuple(out) + (batch_size,)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (buckets ascending); ``n`` itself when it exceeds them all."""
    for b in buckets:
        if b >= n:
            return int(b)
    return int(n)


@dataclass(frozen=True)
class TextBuckets:
    """The shapes one encoder pads its text batches to.

    lengths : token lengths (ascending; the last is the model's maximum), or None to keep
        the tokenizer's own length (SigLIP's fixed maximum).
    rows : batch sizes (ascending; the last is the text batch size).
    """

    lengths: tuple[int, ...] | None
    rows: tuple[int, ...]

    def shapes(self) -> list[tuple[int, int | None]]:
        """Every (rows, length) shape a batch can take (what warm-up runs)."""
        return [(r, n) for r in self.rows for n in (self.lengths or (None,))]


def pad_batch(enc: dict[str, torch.Tensor], *, length: int | None, rows: int,
              pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a tokenised batch to (rows, length): columns with ``pad_id`` in ``input_ids`` and 0
    elsewhere (attention mask, token types), rows with copies of row 0.

    enc : {name: (B, L) tensor}, holding ``input_ids``; length >= L (None: keep L); rows >= B.
    Returns {name: (rows, length)}. Rows B.. copy row 0, so every row is a real prompt (a fully
    masked row can give NaN in attention); callers drop them.
    """
    b, cur = enc["input_ids"].shape
    length = cur if length is None else int(length)
    if length < cur or rows < b:
        raise ValueError(f"cannot pad a ({b}, {cur}) batch down to ({rows}, {length})")
    idx = torch.cat([torch.arange(b), torch.zeros(rows - b, dtype=torch.int64)]) if rows > b else None
    out = {}
    for name, t in enc.items():
        if length > cur:
            t = torch.nn.functional.pad(t, (0, length - cur), value=int(pad_id) if name == "input_ids" else 0)
        out[name] = t if idx is None else t.index_select(0, idx)
    return out


def padding_is_invisible(plain: torch.Tensor, padded: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether two (n, D) embeddings of the same prompts, unpadded and padded, agree within the
    compute dtype's tolerance (cosine of every row pair >= 1 - tol)."""
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    a = torch.nn.functional.normalize(plain.float(), dim=-1)
    b = torch.nn.functional.normalize(padded.float(), dim=-1)
    return bool(((a * b).sum(-1) >= 1 - tol).all())


def switch_on(setting: str | bool, device_type: str) -> bool:
    """An "auto" / "on" / "off" setting (or a bool) for a device: "auto" means on for CUDA only."""
    if isinstance(setting, bool):
        return setting
    if setting not in SWITCHES:
        raise ValueError(f"setting == {setting!r}, must be one of {list(SWITCHES)}")
    return setting == "on" or (setting == "auto" and device_type == "cuda")


def prompt_policy(device_type: str, q: int, batch_size: int, mode: str = "auto",
                  max_batches: int = EAGER_MAX_BATCHES) -> str:
    """"eager" (embed a system's Q prompts when it loads) or "lazy" (each group when first asked).

    ``mode`` "eager" / "lazy" decides outright. "auto": eager only on CUDA and only when the Q
    prompts fit in ``max_batches`` text batches of ``batch_size``: there a batch costs about one
    launch-bound first ask, so embedding everything up front costs less than the several group
    asks an image makes. Everywhere else (CPU, MPS, large systems) lazy, which embeds only the
    groups some image asks. Q = 0 is lazy (nothing to embed).
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"eager_prompts == {mode!r}, must be one of {list(PROMPT_MODES)}")
    if mode != "auto":
        return mode
    if q <= 0 or device_type != "cuda":
        return "lazy"
    return "eager" if math.ceil(q / max(1, int(batch_size))) <= max_batches else "lazy"


def prepare_text(encoder, *, buckets: str | bool = "auto", warm_up: str | bool = "auto",
                 compile_text: bool = False) -> dict[str, object]:
    """Apply the text-shape settings to a loaded encoder, in order: buckets, compile, warm-up.

    ``buckets`` / ``warm_up``: "auto" (on for CUDA only), "on", "off" or a bool. An encoder without
    the machinery (a plug-in, the probe, jina-clip for buckets) is left as it is. Returns what was
    done: {"buckets": bool, "compiled": bool, "warm_up_passes": int, "warm_up_s": float}.
    """
    dev = getattr(getattr(encoder, "device", None), "type", "cpu")
    done: dict[str, object] = {"buckets": False, "compiled": False, "warm_up_passes": 0, "warm_up_s": 0.0}
    if hasattr(encoder, "set_text_buckets"):
        done["buckets"] = encoder.set_text_buckets(switch_on(buckets, dev))
    if compile_text and hasattr(encoder, "compile_text"):
        done["compiled"] = encoder.compile_text()
    if switch_on(warm_up, dev) and hasattr(encoder, "warm_up_text"):
        t0 = time.perf_counter()
        done["warm_up_passes"] = encoder.warm_up_text()
        done["warm_up_s"] = time.perf_counter() - t0
    return done


#: texts per encoder call in :func:`encode_texts_by_length` (one progress step each)
BY_LENGTH_CHUNK = 256


def encode_texts_by_length(encoder, texts: Sequence[str], chunk: int = BY_LENGTH_CHUNK, progress=None):
    """(n, D) float32 numpy embeddings of many ``texts`` (thousands of descriptors), in the order given.

    They are embedded shortest first, ``chunk`` per ``encoder.encode_texts`` call, so the texts of
    one batch are of like length and little of it is padding (with the longest text of the whole
    list in every batch, a 7,000-descriptor file spends most of its time on padding).
    ``progress(k)`` is called after each chunk. Padding does not change an embedding (module
    docstring), so neither does the order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), int(encoder.embed_dim)), np.float32)
    for i in range(0, len(order), chunk):
        idx = order[i:i + chunk]
        out[idx] = encoder.encode_texts([texts[j] for j in idx]).float().cpu().numpy()
        if progress is not None:
            progress(len(idx))
    return out
