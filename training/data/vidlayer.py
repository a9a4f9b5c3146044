"""Reader for VidLayer, the authors' published dataset, in the layouts their loader reads.

Folder layout (one folder per sample; the published set groups them by source, e.g.
VIDGEN/, GOT-10K/, Youtube-VOS/, MOSEv1/, MOSEv2/, so a root may hold sample folders or source folders):

    sample/
      metadata.json      {"captions": {"full": ..., "background": ..., "foreground": ...,
                                       "foreground_2": ..., ...}, "paths": {...} (optional)}
      full_video.mp4     the original (composited) clip          or metadata paths.full_video
      background.mp4     the clean background clip                or metadata paths.background_video
      mask.mp4           alpha of foreground 1 (white = opaque)   or metadata paths.mask_video
      mask_2.mp4 ...     alpha of foreground k >= 2 (multi-subject samples; this project's convention)
      foreground.mp4     optional foreground clip                 or metadata paths.foreground_video

JSONL layout (their loader's other branch): one record per line,

    {"vid": <original clip>, "entry": {"pha_video_path": <mask>, "bg_path": <background>,
     "fgr_path": <optional foreground clip>}, "overall_description": ..., "foreground_prompt": ...,
     "background_prompt": ...}

relative paths resolve against the JSONL file's folder. `captions.foreground` may also be a list
(one caption per foreground). The foreground RGB is always built as full * mask (premultiplied on
black), as the paper and their loader do; an optional foreground clip is accepted and recorded, not
needed. Their loader fills missing captions with "A video." / "An object." / "A background."; this
one refuses them instead: every error is one line naming the sample and the missing field.
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
FOREGROUND_FILE = "foreground.mp4"
SOURCES = ("VIDGEN", "GOT-10K", "Youtube-VOS", "MOSEv1", "MOSEv2")   # the dataset card's groups (informative)


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
    foreground: Path | None = None    # the optional foreground clip (recorded; FG is built as full * mask)
    source: str = ""                  # VIDGEN, GOT-10K, ... when the root groups samples by source

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


def _fail(sample: str, problem: str) -> VidLayerFormatError:
    return VidLayerFormatError(f"VidLayer sample {sample}: {problem}")


def _caption(value, sample: str, field: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    found = "missing" if value is None else f"empty or not text ({value!r:.40})"
    raise _fail(sample, f"field {field!r} is {found}; every layer needs its caption")


def _existing(path: Path, sample: str, field: str) -> Path:
    if not path.is_file():
        raise _fail(sample, f"{field} {path.name!r} does not exist")
    return path


def read_sample_info(folder: str | Path, source: str = "") -> SampleInfo:
    folder = Path(folder)
    sample = repr(f"{source}/{folder.name}" if source else folder.name)
    meta_path = folder / METADATA_FILE
    if not meta_path.exists():
        raise _fail(sample, f"no {METADATA_FILE}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(sample, f"{METADATA_FILE} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _fail(sample, f"{METADATA_FILE} holds {type(meta).__name__}, expected an object")
    paths = meta.get("paths") or {}

    def resolve(local: str, key: str) -> Path:
        p = folder / local
        return p if p.exists() or key not in paths else (folder / paths[key])

    full = _existing(resolve(FULL_FILE, "full_video"), sample, "original clip (full_video.mp4 / paths.full_video)")
    background = _existing(resolve(BACKGROUND_FILE, "background_video"), sample,
                           "background clip (background.mp4 / paths.background_video)")
    names = meta.get("masks")
    if names is None:
        names = []
        while (folder / mask_file_name(len(names) + 1)).exists():
            names.append(mask_file_name(len(names) + 1))
        if not names and "mask_video" in paths:
            names = [paths["mask_video"]]
    if not names:
        raise _fail(sample, "no foreground mask (mask.mp4 / paths.mask_video)")
    masks = tuple(_existing(folder / n, sample, "mask") for n in names)
    foreground = resolve(FOREGROUND_FILE, "foreground_video")
    foreground = foreground if foreground.is_file() else None

    captions = meta.get("captions")
    if not isinstance(captions, dict):
        raise _fail(sample, "field 'captions' is missing (an object with full, background, foreground)")
    full_caption = _caption(captions.get("full"), sample, "captions.full")
    background_caption = _caption(captions.get("background"), sample, "captions.background")
    fg = captions.get("foreground")
    if isinstance(fg, list):
        fg_list = [_caption(c, sample, f"captions.foreground[{i}]") for i, c in enumerate(fg)]
    else:
        fg_list = [_caption(fg, sample, "captions.foreground")] + [
            _caption(captions.get(f"foreground_{k}"), sample, f"captions.foreground_{k}") for k in range(2, len(masks) + 1)]
    if len(fg_list) != len(masks):
        raise _fail(sample, f"{len(masks)} masks but {len(fg_list)} foreground captions")
    return SampleInfo(
        name=f"{source}/{folder.name}" if source else folder.name, full=full, background=background, masks=masks,
        full_caption=full_caption, background_caption=background_caption,
        foreground_captions=tuple(fg_list), foreground=foreground, source=source,
    )


def read_jsonl(path: str | Path, source: str = "") -> list[SampleInfo]:
    """Records of their JSONL layout; relative paths resolve against the file's folder."""
    path = Path(path)
    samples = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise _fail(repr(where), f"not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise _fail(repr(where), f"holds {type(record).__name__}, expected an object")
        vid = record.get("vid")
        sample = repr(f"{where} ({Path(vid).stem})" if isinstance(vid, str) else where)
        entry = record.get("entry")
        if not isinstance(vid, str) or not vid:
            raise _fail(sample, "field 'vid' (the original clip) is missing")
        if not isinstance(entry, dict):
            raise _fail(sample, "field 'entry' (pha_video_path, bg_path) is missing")
        for field in ("pha_video_path", "bg_path"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise _fail(sample, f"field 'entry.{field}' is missing")
        fg_clip = entry.get("fgr_path") or entry.get("fgr_video_path")
        samples.append(SampleInfo(
            name=f"{source}/{Path(vid).stem}" if source else Path(vid).stem,
            full=_existing(path.parent / vid, sample, "entry 'vid'"),
            background=_existing(path.parent / entry["bg_path"], sample, "entry.bg_path"),
            masks=(_existing(path.parent / entry["pha_video_path"], sample, "entry.pha_video_path"),),
            full_caption=_caption(record.get("overall_description"), sample, "overall_description"),
            background_caption=_caption(record.get("background_prompt"), sample, "background_prompt"),
            foreground_captions=(_caption(record.get("foreground_prompt"), sample, "foreground_prompt"),),
            foreground=(path.parent / fg_clip) if isinstance(fg_clip, str) and (path.parent / fg_clip).is_file() else None,
            source=source,
        ))
    return samples


def find_samples(root: str | Path) -> list[SampleInfo]:
    """Every sample under root: sample folders and *.jsonl files, directly or one source folder down."""
    root = Path(root)
    if not root.is_dir():
        raise VidLayerFormatError(f"VidLayer root {str(root)!r} is not a folder")
    samples = []
    for group, source in [(root, "")] + [(d, d.name) for d in sorted(root.iterdir())
                                         if d.is_dir() and not (d / METADATA_FILE).exists()]:
        for folder in sorted(p for p in group.iterdir() if (p / METADATA_FILE).exists()):
            samples.append(read_sample_info(folder, source))
        for jsonl in sorted(group.glob("*.jsonl")):
            samples.extend(read_jsonl(jsonl, source))
    if not samples:
        raise VidLayerFormatError(
            f"{str(root)!r}: no VidLayer samples (folders with {METADATA_FILE}, or *.jsonl records), "
            f"directly or in source folders such as {', '.join(SOURCES[:3])}"
        )
    return samples


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
