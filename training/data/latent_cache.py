"""Optional latent cache: VAE latents, text embeddings and GT alpha precomputed to safetensors.

One file per (sample, clip size): `<cache_dir>/<sample>_<F>x<H>x<W>_s<stride>.safetensors` holding
`latent` (16, L*T', h, w), `context` (P, text_len, dim) and `alpha` (K, F, H, W) as float16. Cached
clips are deterministic (first frames, centred crop): the random window/crop of the raw reader would
otherwise be frozen into one arbitrary draw. Processes split the work; the cache is reused by later
runs with the same clip size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .vidlayer import ClipSpec, VidLayerDataset


def cache_name(sample: str, clip: ClipSpec) -> str:
    return f"{sample}_{clip.num_frames}x{clip.height}x{clip.width}_s{clip.frame_stride}.safetensors"


def build_latent_cache(dataset: VidLayerDataset, encoder, cache_dir: str | Path, rank: int = 0, world: int = 1) -> list[Path]:
    """Encode this rank's share of the samples that have no cache file yet; returns all file paths."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    clip = dataset.clip
    paths = []
    for i, info in enumerate(dataset.samples):
        path = cache_dir / cache_name(info.name, clip)
        paths.append(path)
        if i % world != rank or path.exists():
            continue
        item = dataset[(i, 0)]
        layout = encoder.layout(info.num_foregrounds, clip.num_frames, clip.height, clip.width)
        tensors = {
            "latent": encoder.latent(item, layout).cpu(),
            "context": encoder.context(item["prompts"], layout).cpu(),
            "alpha": item["alpha"],
        }
        meta = {"layout": json.dumps(layout.to_dict()), "prompts": json.dumps(item["prompts"]), "name": info.name}
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
    return paths


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items: latent, context, alpha (float32) + name; keyed like VidLayerDataset ((index, seed))."""

    def __init__(self, paths: list[Path], names: list[str]):
        self.paths = paths
        self.names = names

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        tensors = load_file(str(self.paths[index]))
        return {"name": self.names[index], **{k: v.float() for k, v in tensors.items()}}


def collate_cached(items: list[dict]) -> dict:
    shapes = {tuple(it["latent"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"a cached batch mixes latent shapes {sorted(shapes)}")
    out = {"name": [it["name"] for it in items]}
    for key in ("latent", "context", "alpha"):
        out[key] = torch.stack([it[key] for it in items])
    return out
