"""Attention kernel as a setting, through diffusers' attention dispatcher.

Every attention in the DiT (self-attention and the routed cross-attention, which never passes a mask)
goes through `dispatch_attention_fn`, so one name picks the kernel for all of them. A kernel that is not
installed or cannot run on the device is refused up front with one line, by running it once on a tiny
input: no surprise deep inside the first step.
"""

from __future__ import annotations

import logging

# our name -> (diffusers AttentionBackendName value, what it needs)
BACKENDS = {
    "sdpa": ("native", "PyTorch scaled_dot_product_attention, any device (default)"),
    "math": ("_native_math", "PyTorch's reference math kernel, any device (slow; for checks)"),
    "cudnn": ("_native_cudnn", "PyTorch's cuDNN attention, CUDA GPUs (Hopper: often the fastest built-in)"),
    "torch-flash": ("_native_flash", "PyTorch's built-in FlashAttention-2, CUDA GPUs"),
    "efficient": ("_native_efficient", "PyTorch's memory-efficient kernel, CUDA GPUs"),
    "flash": ("flash", "the flash-attn package (FlashAttention-2)"),
    "flash3": ("_flash_3", "FlashAttention-3 (flash_attn_interface, Hopper GPUs)"),
    "sage": ("sage", "the sageattention package"),
}
DEFAULT_BACKEND = "sdpa"


class AttentionBackendError(ValueError):
    """A chosen kernel is unknown, not installed, or cannot run here."""


def describe() -> str:
    return "; ".join(f"{name}: {what}" for name, (_, what) in BACKENDS.items())


def check_backend(name: str, device="cpu", dtype=None) -> None:
    """Raise AttentionBackendError (one line) unless `name` runs on `device` with `dtype` (bf16 on CUDA)."""
    import torch
    from diffusers.models.attention_dispatch import (AttentionBackendName, _check_attention_backend_requirements,
                                                     dispatch_attention_fn)

    if name not in BACKENDS:
        raise AttentionBackendError(f"attention={name!r} is not known: choose one of {', '.join(BACKENDS)}")
    backend = AttentionBackendName(BACKENDS[name][0])
    device = torch.device(device)
    dtype = (dtype or torch.bfloat16) if device.type == "cuda" else torch.float32
    try:
        _check_attention_backend_requirements(backend)
        q = torch.randn(1, 8, 2, 64, device=device, dtype=dtype)  # (batch, tokens, heads, head_dim)
        dispatch_attention_fn(q, q, q, backend=backend)
    except Exception as err:  # noqa: BLE001 -- any failure means: not usable here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AttentionBackendError(f"attention={name!r} cannot run on {device.type} here: {reason[:160]}; "
                                    f"use 'sdpa' or install the kernel ({BACKENDS[name][1]})") from None


def available_backends(device="cpu", dtype=None) -> list[str]:
    out = []
    for name in BACKENDS:
        try:
            check_backend(name, device, dtype)
            out.append(name)
        except AttentionBackendError:
            pass
    return out


def set_attention_backend(dit, name: str, device=None) -> None:
    """Route every attention of `dit` (a LayeredWanTransformer) through kernel `name`, after checking it."""
    check_backend(name, device if device is not None else dit.device, dit.dtype)
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # diffusers warns "experimental" on every call
    try:
        dit.base.set_attention_backend(BACKENDS[name][0])
    finally:
        quiet.setLevel(level)
    dit.attention_backend = name
