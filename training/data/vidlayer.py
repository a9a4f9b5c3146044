"""Reader for the VidLayer layout: one folder per sample.

    sample/
      metadata.json      {"captions": {"full": ..., "background": ..., "foreground": ...,
                                       "foreground_2": ..., ...}, "num_foregrounds": K, ...}
      full_video.mp4     the composited video
      background.mp4     the clean background
      mask.mp4           alpha of foreground 1 (white = opaque)
      mask_2.mp4 ...     alpha of foreground k >= 2 (multi-subject samples; this project's convention)

Also accepted: `captions.foreground` as a list (one caption per foreground), and the authors'
`paths: {full_video, background_video, mask_video}` entries for files stored elsewhere. The foreground
RGB is never read from disk: it is built as full * mask (premultiplied on black), as the paper does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .video_io import count_frames, read_frames

METADATA_FILE = "metadata.json"
FULL_FILE = "full_video.mp4"
BACKGROUND_FILE = "background.mp4"


def mask_file_name(k: int) -> str:
    """mask.mp4 for foreground 1 (the single-subject VidLayer name), mask_<k>.mp4 after it."""
    return "mask.mp4" if k == 1 else f"mask_{k}.mp4"


@dataclass(frozen=True)
class SampleInfo:
    name: str
    full: Path
    background: Path
    masks: tuple[Path, ...]
    full_caption: str
    background_caption: str
    foreground_captions: tuple[str, ...]

    @property
    def num_foregrounds(self) -> int:
        return len(self.masks)

    def prompts(self) -> dict[str, str]:
        """Captions keyed by the core's prompt slot names (full, background, foreground_k)."""
        out = {"full": self.full_caption, "background": self.background_caption}
        out.update({f"foreground_{k}": c for k, c in enumerate(self.foreground_captions, start=1)})
        return out


class VidLayerFormatError(ValueError):
    pass


def read_sample_info(folder: str | Path) -> SampleInfo:
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not meta_path.exists():
        raise VidLayerFormatError(f"{folder}: no {METADATA_FILE}")
    meta = json.loads(meta_path.read_text())
    paths = meta.get("paths", {})

    def resolve(local: str, key: str) -> Path:
        p = folder / local
        return p if p.exists() or key not in paths else Path(paths[key])

    full = resolve(FULL_FILE, "full_video")
    background = resolve(BACKGROUND_FILE, "background_video")
    names = meta.get("masks")
    if names is None:
        names = []
        while (folder / mask_file_name(len(names) + 1)).exists():
            names.append(mask_file_name(len(names) + 1))
        if not names and "mask_video" in paths:
            names = [paths["mask_video"]]
    masks = tuple(p if p.is_absolute() else folder / p for p in map(Path, names))
    for p in (full, background, *masks):
        if not p.exists():
            raise VidLayerFormatError(f"{folder}: missing {p.name}")
    if not masks:
        raise VidLayerFormatError(f"{folder}: no mask video (expected mask.mp4)")

    captions = meta.get("captions", {})
    fg = captions.get("foreground", "")
    fg_list = list(fg) if isinstance(fg, list) else [fg] + [captions.get(f"foreground_{k}", "")
                                                           for k in range(2, len(masks) + 1)]
    if len(fg_list) != len(masks):
        raise VidLayerFormatError(f"{folder}: {len(masks)} masks but {len(fg_list)} foreground captions")
    return SampleInfo(
        name=folder.name, full=full, background=background, masks=masks,
        full_caption=captions.get("full", ""), background_caption=captions.get("background", ""),
        foreground_captions=tuple(fg_list),
    )


def find_samples(root: str | Path) -> list[SampleInfo]:
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if (p / METADATA_FILE).exists())
    if not folders:
        raise VidLayerFormatError(f"{root}: no sample folders with {METADATA_FILE}")
    return [read_sample_info(p) for p in folders]


@dataclass(frozen=True)
class ClipSpec:
    """What one training clip looks like; the stage's current resolution phase sets it."""
    num_frames: int
    height: int
    width: int
    frame_stride: int = 1
    random_start: bool = True   # random temporal window (else the first frames)
    random_crop: bool = False   # random spatial crop after the cover-resize (else centred)


def frame_indices(total: int, clip: ClipSpec, rng: np.random.Generator) -> list[int]:
    """num_frames indices with the clip's stride; a short video is strided less, then its last frame repeated."""
    stride = clip.frame_stride
    if (clip.num_frames - 1) * stride + 1 > total:
        stride = max(1, (total - 1) // max(1, clip.num_frames - 1))
    span = (clip.num_frames - 1) * stride + 1
    start = int(rng.integers(0, total - span + 1)) if clip.random_start and total > span else 0
    return [min(start + i * stride, total - 1) for i in range(clip.num_frames)]


def cover_resize_crop(video: torch.Tensor, height: int, width: int, offset: tuple[float, float]) -> torch.Tensor:
    """(F, C, h, w) float -> (F, C, height, width): scale to cover, then crop at offset in [0, 1]^2."""
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top = round((new_h - height) * offset[0])
    left = round((new_w - width) * offset[1])
    return video[..., top:top + height, left:left + width].clamp(0.0, 1.0)


class VidLayerDataset(torch.utils.data.Dataset):
    """Items are keyed by (sample index, augmentation seed) so a resumed run redraws the same clips.

    Item: full (F, H, W, 3), background (F, H, W, 3), foreground (K, F, H, W, 3) = full * alpha,
    alpha (K, F, H, W), all float in [0, 1]; prompts {slot: caption}; name.
    """

    def __init__(self, samples: list[SampleInfo], clip: ClipSpec, masks_only: bool = False):
        self.samples = samples
        self.clip = clip
        self.masks_only = masks_only  # stage 1 reads only the mattes
        self._frame_counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def num_foregrounds(self, index: int) -> int:
        return self.samples[index].num_foregrounds

    def _total_frames(self, index: int) -> int:
        if index not in self._frame_counts:
            info = self.samples[index]
            self._frame_counts[index] = min(count_frames(p) for p in (info.full, info.background, *info.masks))
        return self._frame_counts[index]

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        info = self.samples[index]
        rng = np.random.default_rng([seed, index])
        idx = frame_indices(self._total_frames(index), self.clip, rng)
        offset = (float(rng.uniform()), float(rng.uniform())) if self.clip.random_crop else (0.5, 0.5)

        def load(path: Path) -> torch.Tensor:  # -> (F, 3, H, W) in [0, 1]
            video = torch.from_numpy(read_frames(path, idx)).permute(0, 3, 1, 2).float() / 255.0
            return cover_resize_crop(video, self.clip.height, self.clip.width, offset)

        # Masks written as RGB or gray: the channel mean is the alpha either way.
        alpha = torch.stack([load(p).mean(dim=1) for p in info.masks])          # (K, F, H, W)
        if self.masks_only:
            return {"name": info.name, "alpha": alpha, "prompts": info.prompts()}
        full = load(info.full)
        background = load(info.background)
        full_hwc = full.permute(0, 2, 3, 1)
        return {
            "name": info.name,
            "full": full_hwc,
            "background": background.permute(0, 2, 3, 1),
            "alpha": alpha,
            "foreground": full_hwc[None] * alpha[..., None],
            "prompts": info.prompts(),
        }


def collate_layered(items: list[dict]) -> dict:
    """Stack a batch whose samples share the number of foregrounds (BatchOrder buckets by it)."""
    ks = {it["alpha"].shape[0] for it in items}
    if len(ks) != 1:
        raise ValueError(f"a batch mixes foreground counts {sorted(ks)}; bucket batches by num_foregrounds")
    out = {"name": [it["name"] for it in items], "prompts": [it["prompts"] for it in items]}
    for key in items[0]:
        if isinstance(items[0][key], torch.Tensor):
            out[key] = torch.stack([it[key] for it in items])
    return out
