"""Lazy text embeddings: a group's prompts are embedded the first time the group is asked.

:class:`TextCache` sits between the engine's similarity source and an encoder.
``embed(prompts)`` returns the (K, D) embeddings of a list of prompts on the
encoder's device. Prompts it has not seen are encoded together, as one call
to ``encoder.encode_texts`` (batched by the encoder's batch size); prompts it
has seen come from memory.

Counters, per prompt: ``text_encodes`` (prompts the model actually encoded,
the compute) and ``hits`` (prompts served from memory or disk).
``disk_hits`` counts the part of ``hits`` read from disk, and ``rebuilt`` the
disk files that failed to load and were re-encoded.

Disk cache (optional, ``cache_dir``)
-------------------------------------
One safetensors file per (model id + dtype, prompt list), named by the
sha256 of that key: ``<cache_dir>/text/<sha256>.safetensors``, holding the
(K, D) float32 tensor and, as metadata, the model id and the prompts. A file is
used only if it parses and its metadata, shape and values check out; otherwise
it is ignored, re-encoded, rewritten, and a :class:`CacheWarning` names it; so
is anything under the file's name that is not a regular file (a FIFO, socket,
device or folder), which is never opened, so it cannot block the run.
Writes go to a temp file in the same folder and are renamed into place
(``os.replace``, atomic), so two processes writing the same key leave one
complete file, never a mix. No pickle anywhere.

A write that fails (disk full, read-only folder, permissions) turns the disk
cache off for this TextCache: one :class:`CacheWarning` says so, the run goes
on from memory, and reads of files already there still work. A leftover temp
file from a killed process is never read (only the final name is), and the
key is rewritten next time.

Non-finite embeddings: prompts the encoder returns NaN/inf (or zero) for are
kept in memory as NaN rows, never written to disk, and reported once with a
:class:`NonFiniteWarning`; the engine then fails each image that asks that
group (``engine.core.adaptive``), naming the group, and the others go on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.encoders.base import Encoder, OneLineWarning, cache_identity, nonfinite_rows
from engine.common.files import atomic_write, check_regular_file

FORMAT = "twentyq-text-v1"


class CacheWarning(OneLineWarning, UserWarning):
    """A cache file that failed to load and was rebuilt, or a disk cache turned off after a failed write."""


class NonFiniteWarning(OneLineWarning, RuntimeWarning):
    """The encoder returned NaN/inf or a zero vector for some prompts."""


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (:func:`engine.common.files.atomic_write`: temp file, fsync, rename).

    Any failure to write (a full disk included) raises OSError and leaves no file behind.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        try:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as e:  # a full disk surfaces as this, not as OSError
            code = errno.ENOSPC if "os error 28" in str(e) else errno.EIO
            raise OSError(code, f"cannot write {path.name}: {e}") from e

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (raises on any damage).

    Only a regular file is opened: a FIFO, socket, device or folder under the
    cache's name raises ValueError/OSError at once (opening a FIFO would block
    in native code, where no signal can stop it).
    """
    from safetensors import safe_open

    try:
        check_regular_file(path, what="cache file")
    except (OSError, ValueError) as e:
        raise type(e)(getattr(e, "cause", None) or str(e)) from None

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        return {k: f.get_tensor(k) for k in f.keys()}, meta


class TextCache:
    """Per-prompt text embeddings for one encoder, computed lazily (see the module docstring).

    Parameters
    ----------
    encoder : an :class:`engine.encoders.Encoder`.
    cache_dir : folder for the optional disk cache (None: memory only).
    """

    def __init__(self, encoder: Encoder, cache_dir: str | os.PathLike | None = None):
        self.encoder = encoder
        self.identity = cache_identity(encoder)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._rows: dict[str, torch.Tensor] = {}  # prompt -> (D,) on the device
        self._groups: dict[tuple[str, ...], torch.Tensor] = {}  # prompt list -> (K, D)
        self.text_encodes = 0
        self.hits = 0
        self.disk_hits = 0
        self.rebuilt = 0
        self.encode_calls = 0
        self.disk_writes_ok = True  # turned off by the first failed write (see the module docstring)

    # -- public -------------------------------------------------------------------
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """(K, D) float32 unit embeddings of ``prompts`` on the encoder's device, in order."""
        key = tuple(prompts)
        if not key:
            raise ValueError("prompts is empty; a group needs at least one option")
        got = self._groups.get(key)
        if got is not None:
            self.hits += len(key)
            return got
        missing = list(dict.fromkeys(p for p in key if p not in self._rows))
        if missing:
            emb = self._from_disk(missing)
            if emb is None:
                emb = self.encoder.encode_texts(missing)
                self.encode_calls += 1
                self.text_encodes += len(missing)
                bad = nonfinite_rows(emb)
                if bad:
                    warnings.warn(f"{self.encoder.name}: the encoder returned NaN/inf or a zero vector for "
                                  f"{len(bad)} prompt(s), e.g. {missing[bad[0]]!r}; images asking their group "
                                  "will be reported as errors", NonFiniteWarning, stacklevel=2)
                else:
                    self._to_disk(missing, emb)
            else:
                self.disk_hits += len(missing)
                self.hits += len(missing)
            for p, row in zip(missing, emb):
                self._rows[p] = row
        self.hits += len(key) - len(missing)
        out = torch.stack([self._rows[p] for p in key])
        self._groups[key] = out
        return out

    def stats(self) -> dict[str, int]:
        return {"text_encodes": self.text_encodes, "hits": self.hits, "disk_hits": self.disk_hits,
                "rebuilt": self.rebuilt, "encode_calls": self.encode_calls}

    def clear(self) -> None:
        """Forget the in-memory embeddings (the disk cache stays)."""
        self._rows.clear()
        self._groups.clear()

    def path_for(self, prompts: Sequence[str]) -> Path:
        if self.cache_dir is None:
            raise ValueError("this TextCache has no cache_dir")
        h = hashlib.sha256(json.dumps([FORMAT, self.identity, list(prompts)], ensure_ascii=False).encode())
        return self.cache_dir / "text" / f"{h.hexdigest()}.safetensors"

    # -- disk -----------------------------------------------------------------------
    def _from_disk(self, prompts: list[str]) -> torch.Tensor | None:
        if self.cache_dir is None:
            return None
        path = self.path_for(prompts)
        if not path.exists():
            return None
        try:
            tensors, meta = read_safetensors(path)
            emb = tensors["embeddings"]
            if meta.get("format") != FORMAT or meta.get("identity") != self.identity:
                raise ValueError("metadata names another model or format")
            if json.loads(meta.get("prompts", "null")) != prompts:
                raise ValueError("metadata names other prompts")
            if emb.dtype != torch.float32 or tuple(emb.shape) != (len(prompts), self.encoder.embed_dim):
                raise ValueError(f"tensor shape {tuple(emb.shape)} != {(len(prompts), self.encoder.embed_dim)}")
            if not torch.isfinite(emb).all() or not torch.allclose(emb.norm(dim=1), torch.ones(len(prompts)),
                                                                      atol=1e-3):
                raise ValueError("embeddings are not finite unit vectors")
        except Exception as e:  # noqa: BLE001  (any damage: rebuild, never trust)
            self.rebuilt += 1
            cause = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"text cache file {path} failed to load ({type(e).__name__}: {cause[:160]}); "
                          "ignoring it and re-encoding", CacheWarning, stacklevel=3)
            return None
        return emb.to(self.encoder.device)

    def _to_disk(self, prompts: list[str], emb: torch.Tensor) -> None:
        if self.cache_dir is None or not self.disk_writes_ok:
            return
        meta = {"format": FORMAT, "identity": self.identity, "prompts": json.dumps(prompts, ensure_ascii=False)}
        try:
            atomic_save_safetensors({"embeddings": emb}, self.path_for(prompts), meta)
        except OSError as e:
            self.disk_writes_ok = False
            warnings.warn(f"could not write the text cache in {self.cache_dir} ({e}); continuing without "
                          "writing it for the rest of this run", CacheWarning, stacklevel=3)
