"""Per-layer prompt encoding with UMT5, the way Wan2.1 encodes text.

Each prompt is encoded on its own, cut to at most `text_len` tokens (EOS kept), the hidden states
trimmed to the real token count and zero-padded back to `text_len`: Wan's pipeline does exactly this
(padding with an attention mask gives the same states for the real tokens, so the padding is not run
through the encoder here). Embeddings that come from elsewhere (ComfyUI's own text encoder) go
through `pad_embedding` and end up in the same shape.
"""

from __future__ import annotations

import html
import logging
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

try:  # Wan's prompt cleaning uses ftfy when it is installed; so do we, so embeddings match
    import ftfy
except ImportError:
    ftfy = None

logger = logging.getLogger("layert2v")  # hosts such as ComfyUI show logging, not Python warnings

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")   # either one is enough
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class PromptTruncatedWarning(UserWarning):
    pass


def clean_prompt(text: str) -> str:
    """Wan's prompt_clean: ftfy when installed, double html-unescape, collapse whitespace."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def check_prompt_text(slot: str, text: str) -> None:
    """Refuse text no tokenizer can read: a lone surrogate (half of an emoji's UTF-16 pair, left by a
    broken copy-paste or a JSON escape such as "\\ud83d") has no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"prompt {slot!r} has a broken character at position {err.start} ({text[err.start]!r}, half "
                         "of an emoji or other character lost in copy-paste); delete or retype it") from None


def fit_text_len(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """(..., L, dim) padded context -> (..., text_len, dim): the length the DiT was trained with.

    Encoders pad with zero rows, so trimming those or appending more changes nothing but the shape;
    a user-set length on the text encoder node therefore cannot move the model off its training length.
    Warns when real (non-zero) rows are cut."""
    length = context.shape[-2]
    if length > text_len:
        if context[..., text_len:, :].abs().amax() > 0:
            warnings.warn(f"prompt embeddings have more than the model's text_len={text_len} tokens; "
                          "the rest are dropped", PromptTruncatedWarning, stacklevel=2)
        return context[..., :text_len, :]
    if length < text_len:
        pad = context.new_zeros(*context.shape[:-2], text_len - length, context.shape[-1])
        return torch.cat([context, pad], dim=-2)
    return context


def pad_embedding(embedding: torch.Tensor, text_len: int) -> torch.Tensor:
    """(L, dim) -> (text_len, dim): cut to text_len rows, zero rows appended. Warns when it cuts."""
    if embedding.ndim == 3 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.ndim != 2:
        raise ValueError(f"text embedding has shape {tuple(embedding.shape)}; expected (tokens, dim)")
    if embedding.shape[0] > text_len:
        warnings.warn(
            f"text embedding has {embedding.shape[0]} tokens; only the first text_len={text_len} are used",
            PromptTruncatedWarning,
            stacklevel=2,
        )
        embedding = embedding[:text_len]
    pad = embedding.new_zeros(text_len - embedding.shape[0], embedding.shape[1])
    return torch.cat([embedding, pad], dim=0)


def find_text_encoder_folders(path: str | Path) -> tuple[Path, Path]:
    """(tokenizer folder, model folder) for a flat folder or a diffusers pipeline root."""
    root = Path(path)
    if root.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is a file; the text encoder is loaded from a folder (config.json, model.safetensors, "
            f"tokenizer.json). A single-file encoder such as ComfyUI's umt5_xxl_*.safetensors stays with ComfyUI: "
            f"pass its embeddings in as precomputed tensors instead"
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"text encoder folder {str(root)!r} does not exist; give a folder holding config.json, "
            f"model.safetensors and tokenizer.json (or a diffusers pipeline folder with text_encoder/ and tokenizer/)"
        )
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    model_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    if not any((tok_dir / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer in {str(tok_dir)!r}: expected {' or '.join(TOKENIZER_FILES)} "
            f"(the UMT5 tokenizer of Wan2.1, e.g. the tokenizer/ folder of Wan2.1-T2V-1.3B-Diffusers)"
        )
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in text encoder folder {str(model_dir)!r}")
    if not any((model_dir / f).is_file() for f in MODEL_WEIGHT_FILES):
        raise FileNotFoundError(
            f"no weights in text encoder folder {str(model_dir)!r}: expected {' or '.join(MODEL_WEIGHT_FILES)} "
            f"(safetensors only; pickled .bin weights are not loaded)"
        )
    return tok_dir, model_dir


class TextEncoder:
    """UMT5 encoder + tokenizer with an LRU cache of prompt embeddings (keyed by the cleaned prompt)."""

    def __init__(self, model, tokenizer, text_len: int = 512, device=None, cache_size: int = 32,
                 cache_bytes: int | None = None, cache_device=None):
        """cache_size: most prompts kept; cache_bytes: most bytes kept (None: no byte bound);
        cache_device: where cached embeddings live (None: `device`; "cpu" keeps a long training run's
        cache out of GPU memory, each hit is copied back to `device`)."""
        if text_len < 1:
            raise ValueError(f"text_len={text_len} is not valid: it must be 1 or more (Wan uses 512)")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = int(text_len)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dim = int(model.config.d_model)
        self.cache_size = int(cache_size)
        self.cache_bytes = None if cache_bytes is None else int(cache_bytes)
        self.cache_device = torch.device(cache_device) if cache_device is not None else self.device
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        text_len: int = 512,
        dtype: torch.dtype = torch.bfloat16,
        device="cpu",
        cache_size: int = 32,
        cache_bytes: int | None = None,
        cache_device=None,
    ) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        tok_dir, model_dir = find_text_encoder_folders(path)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype, use_safetensors=True)
        return cls(model.to(device), tokenizer, text_len=text_len, device=device, cache_size=cache_size,
                   cache_bytes=cache_bytes, cache_device=cache_device)

    # ---- encoding ----------------------------------------------------------------------------
    def encode(self, prompt: str) -> torch.Tensor:
        """(text_len, dim) embedding of one prompt, on `self.device`, in the model dtype."""
        key = clean_prompt(prompt)
        if key in self._cache:
            self._cache.move_to_end(key)
            # a copy: callers may edit it without poisoning the cache
            return self._cache[key].to(self.device, copy=True)
        embedding = self._encode_uncached(key)
        if self.cache_size > 0:
            kept = embedding.to(self.cache_device, copy=True)
            self._cache[key] = kept
            self._cached_bytes += kept.nbytes
            while self._cache and (len(self._cache) > self.cache_size
                                   or (self.cache_bytes is not None and self._cached_bytes > self.cache_bytes)):
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return embedding.clone()

    def encode_many(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.encode(p) for p in prompts])

    def pad_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """A precomputed (L, dim) embedding -> (text_len, dim), like an encoded prompt."""
        if embedding.shape[-1] != self.dim:
            raise ValueError(f"text embedding width {embedding.shape[-1]} != text encoder width {self.dim}")
        return pad_embedding(embedding, self.text_len)

    def _encode_uncached(self, prompt: str) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("this TextEncoder was released; load it again to encode new prompts")
        full = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if len(full) > self.text_len:
            warnings.warn(
                f"prompt has {len(full)} tokens, more than text_len={self.text_len}; it is cut "
                f"(prompt starts {prompt[:60]!r})",
                PromptTruncatedWarning,
                stacklevel=3,
            )
        ids = self.tokenizer(prompt, add_special_tokens=True, truncation=True, max_length=self.text_len,
                             return_tensors="pt")["input_ids"]
        model_device = next(self.model.parameters()).device
        if model_device != self.device:  # offloaded: bring back for this call
            self.model.to(self.device)
        with torch.no_grad():
            hidden = self.model(input_ids=ids.to(self.device)).last_hidden_state[0]
        return pad_embedding(hidden, self.text_len)

    # ---- memory ------------------------------------------------------------------------------
    def streamable_blocks(self) -> list:
        """UMT5's encoder blocks: each uses only its own weights inside its forward (offload.py)."""
        encoder = getattr(self.model, "encoder", None)
        return list(getattr(encoder, "block", []))

    def offload(self) -> None:
        """Move the encoder to CPU; it comes back to `device` on the next uncached prompt."""
        if self.model is not None:
            self.model.to("cpu")

    def release(self) -> None:
        """Drop the encoder entirely (cached embeddings stay usable)."""
        self.model = None

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0


def encode_layer_prompts(
    prompts: dict[str, str | torch.Tensor],
    layout_prompt_names: list[str],
    negative: str | torch.Tensor = "",
    encoder: TextEncoder | None = None,
    text_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional and unconditional text for a layout: two (P, text_len, dim) tensors.

    `prompts` maps each slot of `LayerLayout.prompt_names` to a prompt string or a precomputed
    (L, dim) embedding; the rows follow `layout_prompt_names`. Every uncond slot holds the negative
    prompt (so classifier-free guidance pushes each layer away from it).
    """
    unknown = [k for k in prompts if k not in layout_prompt_names]
    if unknown:
        raise ValueError(f"unknown prompt slot(s) {unknown}; this layout has {layout_prompt_names}")
    if text_len is None:
        if encoder is None:
            raise ValueError("give text_len when no TextEncoder is passed")
        text_len = encoder.text_len

    def embed_unnamed(slot: str, value) -> torch.Tensor:
        if torch.is_tensor(value):
            return encoder.pad_embedding(value) if encoder is not None else pad_embedding(value, text_len)
        if not isinstance(value, str):
            raise ValueError(f"prompt {slot!r} must be a string or an (L, dim) tensor, got {type(value).__name__}")
        if encoder is None:
            raise ValueError(f"prompt {slot!r} is text but no TextEncoder was given to encode it")
        check_prompt_text(slot, value)
        return encoder.encode(value)

    def embed(slot: str, value) -> torch.Tensor:
        # A cut prompt is not an error, but the user must hear which one was cut: the warning is
        # re-issued with the slot name, and logged for hosts that do not show Python warnings.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncatedWarning)
            out = embed_unnamed(slot, value)
        for w in caught:
            if issubclass(w.category, PromptTruncatedWarning):
                message = f"prompt {slot!r}: {w.message}"
                logger.warning("LayerT2V: %s", message)
                warnings.warn(message, PromptTruncatedWarning, stacklevel=3)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return out

    cond = []
    for slot in layout_prompt_names:
        value = prompts.get(slot)
        if value is None or (isinstance(value, str) and not clean_prompt(value)):
            raise ValueError(f"prompt {slot!r} is empty; every slot of {layout_prompt_names} needs a prompt")
        cond.append(embed(slot, value))
    first = cond[0]  # precomputed and encoded rows may differ in dtype/device: follow the first slot
    for slot, row in zip(layout_prompt_names, cond):
        if row.shape != first.shape:
            raise ValueError(
                f"prompt {slot!r} embedding is {tuple(row.shape)} but {layout_prompt_names[0]!r} is "
                f"{tuple(first.shape)}; "
                f"all slots need the same text encoder width"
            )
    cond = torch.stack([c.to(device=first.device, dtype=first.dtype) for c in cond])
    uncond_row = embed("negative", negative).to(device=cond.device, dtype=cond.dtype)
    if uncond_row.shape != cond.shape[1:]:
        raise ValueError(f"negative embedding {tuple(uncond_row.shape)} != prompt embeddings {tuple(cond.shape[1:])}")
    uncond = uncond_row.unsqueeze(0).expand_as(cond).clone()
    return cond, uncond
