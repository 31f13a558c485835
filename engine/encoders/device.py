"""Device and dtype: the one place they are chosen.

``resolve_device("auto")`` picks CUDA if present, then Apple MPS, then the CPU.
``resolve_dtype(None, device)`` gives float16 on a GPU and float32 on the CPU;
bfloat16 is available on a GPU by asking for it. Half precision on the CPU is
refused (slow and inaccurate there), with an error that says what to pass.

Every encoder calls these two functions and nothing else decides a device.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cuda", "mps", "cpu")

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A torch.device from "auto", "cuda", "cuda:1", "mps", "cpu" or a torch.device.

    "auto" (or None) picks cuda, then mps, then cpu. Asking for an absent
    accelerator raises ValueError saying which devices are present.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device == {device!r}, must be one of {list(DEVICES)} (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device == {device!r} but CUDA is not available here; "
                         f"use device='auto' or 'cpu' (present: {available_devices()})")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"device == {device!r} but MPS is not available here; "
                         f"use device='auto' or 'cpu' (present: {available_devices()})")
    if dev.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device == {device!r}, must be one of {list(DEVICES)} (or 'cuda:N')")
    return dev


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.insert(0, "cuda")
    if _mps_available():
        out.insert(0 if "cuda" not in out else 1, "mps")
    return out


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``device``.

    None or "auto": float16 on cuda/mps, float32 on cpu. Strings: fp32/float32,
    fp16/float16/half, bf16/bfloat16. Half precision on the CPU raises
    ValueError (pass dtype="fp32" or run on a GPU).
    """
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        try:
            dt = _DTYPES[str(dtype).strip().lower()]
        except KeyError:
            raise ValueError(f"dtype == {dtype!r}, must be one of {sorted(set(_DTYPES))} or None") from None
    if dt not in DTYPE_NAMES:
        raise ValueError(f"dtype == {dtype!r}, must be float32, float16 or bfloat16")
    if device.type == "cpu" and dt != torch.float32:
        raise ValueError(f"dtype == {dtype!r} on the CPU: half precision needs a GPU; "
                         "pass dtype='fp32' (or None) on the CPU")
    return dt


def dtype_name(dtype: torch.dtype) -> str:
    """Short name used in cache keys: fp32, fp16, bf16."""
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
