"""The layer layout: the one source of truth for segment order, kinds, offsets and prompt routing.

A LayerT2V generation is one latent video serialized along time:

    [full | background | foreground_1 | mask_1 | foreground_2 | mask_2 | ...]

each segment holding T' = (F - 1) / time_stride + 1 latent frames of one layer, each frame
(H / space_stride) x (W / space_stride) latent pixels, patchified by the DiT's patch. Every other
module asks this file where a segment starts, which LayerAdaLN row it uses, which prompts it may
attend to and how big its latent is. The strides are the VAE's and the patch the DiT's: a layout for
loaded models gets them from those models (model_geometry.py); the defaults are Wan2.1's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

FULL = "full"
BACKGROUND = "background"
FOREGROUND = "foreground"
MASK = "mask"
KINDS = (FULL, BACKGROUND, FOREGROUND, MASK)

# Wan2.1: the VAE compresses time by 4 (first frame kept) and space by 8; the DiT patchifies 1x2x2.
# Defaults only, where no model is at hand: other VAEs say theirs in their config (model_geometry.py).
WAN21_TIME_STRIDE = 4
WAN21_SPACE_STRIDE = 8
WAN21_PATCH_SIZE = (1, 2, 2)
# The Wan VAE encodes frame 0 alone, then chunks of 4 frames through its causal cache, whatever its
# time stride (diffusers' AutoencoderKLWan): a clip is 4k+1 frames, and the time stride divides 4.
FRAME_CHUNK = 4
LATENT_CHANNELS = 16

ROUTING_PRESETS = ("paper", "official", "all")


class LayoutError(ValueError):
    """A generation request that no layout can serve; the message names the parameter."""


@dataclass(frozen=True)
class Segment:
    name: str            # "full", "background", "foreground_1", "mask_1", ...
    kind: str            # one of KINDS
    position: int        # index along the serialized time axis; also the LayerAdaLN row
    foreground: int      # 1-based foreground index for foreground/mask segments, 0 otherwise


def segment_names(num_foregrounds: int) -> list[str]:
    names = [FULL, BACKGROUND]
    for k in range(1, num_foregrounds + 1):
        names += [f"{FOREGROUND}_{k}", f"{MASK}_{k}"]
    return names


def prompt_names(num_foregrounds: int) -> list[str]:
    """Prompt slots in the order their embeddings are concatenated for cross-attention."""
    return [FULL, BACKGROUND] + [f"{FOREGROUND}_{k}" for k in range(1, num_foregrounds + 1)]


def latent_frames(num_frames: int, time_stride: int = WAN21_TIME_STRIDE) -> int:
    """Latent frames of a 4k+1-frame clip: frame 0 alone, then one per `time_stride` frames."""
    return (num_frames - 1) // time_stride + 1


def pixel_frames(num_latent_frames: int, time_stride: int = WAN21_TIME_STRIDE) -> int:
    """Frames a VAE with this time stride decodes from `num_latent_frames` (the inverse of latent_frames)."""
    return 1 + time_stride * (num_latent_frames - 1) if num_latent_frames > 0 else 0


def validate_frames(num_frames: int) -> None:
    if isinstance(num_frames, int) and num_frames >= 1 and (num_frames - 1) % FRAME_CHUNK == 0:
        return
    lower = 1
    if isinstance(num_frames, int) and num_frames > 1:
        lower = (num_frames - 1) // FRAME_CHUNK * FRAME_CHUNK + 1
    raise LayoutError(
        f"frames={num_frames!r} is not valid: the Wan VAE needs 4k+1 frames (1, 5, 9, 13, 17, ...); "
        f"nearest valid values are {lower} and {lower + FRAME_CHUNK}"
    )


def validate_size(name: str, value: int, space_stride: int = WAN21_SPACE_STRIDE, patch: int = 2) -> None:
    multiple = space_stride * patch
    if not isinstance(value, int) or value < multiple or value % multiple:
        raise LayoutError(
            f"{name}={value!r} is not valid: it must be a positive multiple of {multiple} "
            f"(the VAE downsamples by {space_stride} and the DiT patch is {patch})"
        )


def _positive_int(value) -> bool:
    return type(value) is int and value >= 1


@dataclass(frozen=True)
class LayerLayout:
    num_foregrounds: int
    num_frames: int
    height: int
    width: int
    routing: str = "paper"
    patch_size: tuple[int, int, int] = WAN21_PATCH_SIZE   # the DiT's
    time_stride: int = WAN21_TIME_STRIDE                  # the VAE's
    space_stride: int = WAN21_SPACE_STRIDE                # the VAE's

    def __post_init__(self):
        if not isinstance(self.num_foregrounds, int) or self.num_foregrounds < 1:
            raise LayoutError(f"num_foregrounds={self.num_foregrounds!r} is not valid: it must be 1 or more")
        self._check_model_geometry()
        validate_frames(self.num_frames)
        validate_size("height", self.height, self.space_stride, self.patch_size[1])
        validate_size("width", self.width, self.space_stride, self.patch_size[2])
        if self.routing not in ROUTING_PRESETS:
            raise LayoutError(f"routing={self.routing!r} is not valid: choose one of {', '.join(ROUTING_PRESETS)}")

    def _check_model_geometry(self) -> None:
        patch = tuple(self.patch_size) if isinstance(self.patch_size, (list, tuple)) else None
        if patch is None or len(patch) != 3 or not all(map(_positive_int, patch)):
            raise LayoutError(f"patch_size={self.patch_size!r} is not valid: it must be 3 positive integers")
        object.__setattr__(self, "patch_size", patch)
        if not _positive_int(self.space_stride):
            raise LayoutError(f"space_stride={self.space_stride!r} is not valid: it must be a positive integer")
        if not _positive_int(self.time_stride) or FRAME_CHUNK % self.time_stride:
            raise LayoutError(f"time_stride={self.time_stride!r} is not valid: the Wan VAE encodes {FRAME_CHUNK}-frame "
                              "chunks, so its time stride is 1, 2 or 4")

    # ---- segments -------------------------------------------------------------------------
    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        out = []
        for pos, name in enumerate(segment_names(self.num_foregrounds)):
            kind, _, k = name.partition("_")
            out.append(Segment(name=name, kind=kind, position=pos, foreground=int(k) if k else 0))
        return tuple(out)

    @property
    def num_segments(self) -> int:
        return 2 + 2 * self.num_foregrounds

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(f"no segment {name!r} in a layout with {self.num_foregrounds} foreground(s): {self.names}")

    def segments_of_kind(self, kind: str) -> list[Segment]:
        return [s for s in self.segments if s.kind == kind]

    # ---- latent geometry ------------------------------------------------------------------
    @property
    def latent_frames(self) -> int:
        return latent_frames(self.num_frames, self.time_stride)

    @property
    def latent_height(self) -> int:
        return self.height // self.space_stride

    @property
    def latent_width(self) -> int:
        return self.width // self.space_stride

    def latent_shape(self, batch: int = 1, channels: int = LATENT_CHANNELS) -> tuple[int, ...]:
        return (batch, channels, self.num_segments * self.latent_frames, self.latent_height, self.latent_width)

    def segment_latent_shape(self, batch: int = 1, channels: int = LATENT_CHANNELS) -> tuple[int, ...]:
        return (batch, channels, self.latent_frames, self.latent_height, self.latent_width)

    def time_slice(self, name: str) -> slice:
        start = self.segment(name).position * self.latent_frames
        return slice(start, start + self.latent_frames)

    # ---- tokens ---------------------------------------------------------------------------
    @property
    def tokens_per_segment(self) -> int:
        pt, ph, pw = self.patch_size
        return (self.latent_frames // pt) * (self.latent_height // ph) * (self.latent_width // pw)

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_segment * self.num_segments

    def token_slice(self, name: str) -> slice:
        start = self.segment(name).position * self.tokens_per_segment
        return slice(start, start + self.tokens_per_segment)

    def token_segment_ids(self, device=None) -> torch.Tensor:
        """(num_tokens,) segment position of every token, for inspection and dense-mask references."""
        ids = torch.arange(self.num_segments, device=device)
        return ids.repeat_interleave(self.tokens_per_segment)

    # ---- prompt routing -------------------------------------------------------------------
    @property
    def prompt_names(self) -> list[str]:
        return prompt_names(self.num_foregrounds)

    def visible_prompts(self, name: str) -> tuple[str, ...]:
        """Prompt slots that a segment's queries may attend to, under this layout's routing preset.

        paper:    full -> every prompt; background -> its own; foreground_k and mask_k -> foreground_k.
        official: as paper, and every layer also sees the full prompt (the authors' public code).
        all:      every segment sees every prompt (plain temporal concatenation, the ablation baseline).
        """
        seg = self.segment(name)
        everything = tuple(self.prompt_names)
        if self.routing == "all" or seg.kind == FULL:
            return everything
        own = BACKGROUND if seg.kind == BACKGROUND else f"{FOREGROUND}_{seg.foreground}"
        if self.routing == "official":
            return (FULL, own)
        return (own,)

    def routing_groups(self) -> list[tuple[tuple[str, ...], list[Segment]]]:
        """Segments grouped by identical prompt visibility, in segment order within each group."""
        groups: dict[tuple[str, ...], list[Segment]] = {}
        for s in self.segments:
            groups.setdefault(self.visible_prompts(s.name), []).append(s)
        return list(groups.items())

    def visibility_table(self) -> list[list[bool]]:
        """[segment][prompt] -> visible; the table as data, for configs and documentation."""
        return [[p in self.visible_prompts(s.name) for p in self.prompt_names] for s in self.segments]

    # ---- serialized latent ----------------------------------------------------------------
    def split(self, latent: torch.Tensor, time_dim: int = 2) -> dict[str, torch.Tensor]:
        expected = self.num_segments * self.latent_frames
        if latent.shape[time_dim] != expected:
            raise LayoutError(
                f"latent has {latent.shape[time_dim]} frames on dim {time_dim}; this layout "
                f"({self.num_foregrounds} foreground(s), {self.num_frames} frames) needs {expected}"
            )
        chunks = latent.split(self.latent_frames, dim=time_dim)
        return dict(zip(self.names, chunks))

    def join(self, parts: dict[str, torch.Tensor], time_dim: int = 2) -> torch.Tensor:
        missing = [n for n in self.names if n not in parts]
        if missing:
            raise LayoutError(f"cannot join: missing segment(s) {missing}; expected {self.names}")
        extra = [n for n in parts if n not in self.names]
        if extra:
            raise LayoutError(f"cannot join: unknown segment(s) {extra}; expected {self.names}")
        for n in self.names:
            if parts[n].shape[time_dim] != self.latent_frames:
                raise LayoutError(
                    f"segment {n!r} has {parts[n].shape[time_dim]} latent frames, expected {self.latent_frames}"
                )
        return torch.cat([parts[n] for n in self.names], dim=time_dim)

    # ---- (de)serialisation for latents that travel between nodes --------------------------
    def to_dict(self) -> dict:
        return {
            "num_foregrounds": self.num_foregrounds,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "routing": self.routing,
            "patch_size": list(self.patch_size),
            "time_stride": self.time_stride,
            "space_stride": self.space_stride,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerLayout":
        return cls(
            num_foregrounds=int(d["num_foregrounds"]),
            num_frames=int(d["num_frames"]),
            height=int(d["height"]),
            width=int(d["width"]),
            routing=d.get("routing", "paper"),
            patch_size=tuple(d.get("patch_size", WAN21_PATCH_SIZE)),
            time_stride=d.get("time_stride", WAN21_TIME_STRIDE),
            space_stride=d.get("space_stride", WAN21_SPACE_STRIDE),
        )
