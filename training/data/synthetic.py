"""Synthetic layered videos in the VidLayer layout, so every stage runs and is tested without downloads.

Each sample: a plain-coloured background and 1-3 large, solid, soft-edged shapes moving over it,
composited back to front. The world is sized for a CPU budget (issue 13): a small vocabulary (6 colours x
4 shapes x 4 directions) and no background texture, so the objects, not the background, carry the loss.
The written masks are the *visible* mattes (a shape partly hidden by a shape
in front loses that part), so fg_k = full * mask_k as the reader builds it, and
full = sum_k fg_k + background * (1 - sum_k mask_k) up to soft-edge rounding.

    python -m training.data.synthetic --out data/synthetic --num 32 --height 64 --width 64 --frames 9

Captions are templated per layer: full "a red circle moving right over a blue background",
foreground "a red circle moving right", background "a blue background".
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .video_io import write_alpha_video, write_rgb_video
from .vidlayer import METADATA_FILE, mask_file_name, FULL_FILE, BACKGROUND_FILE

# Well-separated colours: a tiny VAE keeps each one nameable after a round trip (the VAE gate).
COLORS = {
    "red": (0.9, 0.12, 0.1), "green": (0.1, 0.72, 0.18), "blue": (0.12, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1), "white": (0.95, 0.95, 0.95), "purple": (0.58, 0.15, 0.72),
}
SHAPES = ("circle", "square", "triangle", "ring")
SHAPE_TEXTURES = ("plain",)         # "striped" still renders (render_shape), it is just never drawn
BACKGROUND_PATTERNS = ("plain",)    # "stripes", "checkers", "waves", "dots", "gradient" still render
RADIUS = (0.17, 0.25)               # fraction of min(H, W): big objects, ~10-25 % of the frame each
SPEED = (0.25, 0.4)                 # travel over the clip, fraction of the frame: >= 16 px at 64 px
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class SyntheticSpec:
    num_samples: int = 16
    height: int = 64
    width: int = 64
    num_frames: int = 9
    fps: int = 8
    min_foregrounds: int = 1
    max_foregrounds: int = 1
    seed: int = 0
    # Never draw the held-out (colour, shape) pairs, so evaluation can prompt combinations unseen in training.
    hold_out_pairs: int = 0


@dataclass
class ShapeSpec:
    shape: str
    color: str
    texture: str
    direction: str
    radius: float        # fraction of min(H, W)
    start: tuple[float, float]  # centre at frame 0, fractions of (W, H)
    speed: float         # travel over the whole clip, fraction of the frame

    @property
    def caption(self) -> str:
        texture = "striped " if self.texture == "striped" else ""
        return f"{_article(self.color)} {self.color} {texture}{self.shape} moving {self.direction}"


@dataclass
class BackgroundSpec:
    pattern: str
    color_a: str
    color_b: str
    angle: float         # pattern orientation, radians
    drift: tuple[float, float]  # pattern motion over the clip, fraction of the frame

    @property
    def caption(self) -> str:
        if self.pattern == "plain":
            return f"{_article(self.color_a)} {self.color_a} background"
        if self.pattern == "gradient":
            return f"{_article(self.color_a)} {self.color_a} to {self.color_b} gradient"
        return f"{self.color_a} {self.pattern}" if self.color_b in ("white", "black") else \
            f"{self.color_a} and {self.color_b} {self.pattern}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def full_caption(shapes: list[ShapeSpec], background: BackgroundSpec) -> str:
    return " and ".join(s.caption for s in shapes) + " over " + background.caption


def is_held_out_pair(color: str, shape: str) -> bool:
    """One fixed shape per colour (one or two colours per shape) is never drawn with `hold_out_pairs`:
    every colour and every shape still appears in training, only these pairings do not."""
    return list(COLORS).index(color) % len(SHAPES) == SHAPES.index(shape)


def held_out_shape(color: str) -> str:
    return next(s for s in SHAPES if is_held_out_pair(color, s))


def random_scene(rng: np.random.Generator, num_foregrounds: int,
                 hold_out_pairs: bool = False) -> tuple[BackgroundSpec, list[ShapeSpec]]:
    colors = list(COLORS)
    pattern = str(rng.choice(BACKGROUND_PATTERNS))
    bg_a, bg_b = (rng.choice(colors, size=2, replace=False) if pattern != "plain" else [rng.choice(colors)] * 2)
    background = BackgroundSpec(pattern=pattern, color_a=str(bg_a), color_b=str(bg_b), angle=0.0, drift=(0.0, 0.0))
    shapes = []
    used = {bg_a, bg_b}
    for _ in range(num_foregrounds):
        color = str(rng.choice([c for c in colors if c not in used]))  # distinct, so captions tell shapes apart
        used.add(color)
        direction = str(rng.choice(list(DIRECTIONS)))
        speed = float(rng.uniform(*SPEED))
        dx, dy = DIRECTIONS[direction]
        radius = float(rng.uniform(*RADIUS))
        # Start so that the whole path stays inside the frame.
        lo, hi = radius + 0.02, 1 - radius - 0.02
        sx = rng.uniform(lo - min(0, dx) * speed, hi - max(0, dx) * speed)
        sy = rng.uniform(lo - min(0, dy) * speed, hi - max(0, dy) * speed)
        allowed = [s for s in SHAPES if not (hold_out_pairs and is_held_out_pair(color, s))]
        shapes.append(ShapeSpec(shape=str(rng.choice(allowed)), color=color, texture=str(rng.choice(SHAPE_TEXTURES)),
                                direction=direction, radius=radius, start=(float(sx), float(sy)), speed=speed))
    return background, shapes


# ---- rendering (float images in [0, 1]) ------------------------------------------------------
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of min(H, W)."""
    scale = min(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return (x + 0.5) / scale, (y + 0.5) / scale


def render_background(spec: BackgroundSpec, t: float, height: int, width: int) -> np.ndarray:
    x, y = _grid(height, width)
    x = x - spec.drift[0] * t
    y = y - spec.drift[1] * t
    u = x * np.cos(spec.angle) + y * np.sin(spec.angle)
    v = -x * np.sin(spec.angle) + y * np.cos(spec.angle)
    if spec.pattern == "plain":
        w = np.ones_like(u)
    elif spec.pattern == "stripes":
        w = (np.sin(2 * np.pi * 4 * u) > 0).astype(np.float32)
    elif spec.pattern == "checkers":
        w = ((np.floor(4 * u) + np.floor(4 * v)) % 2).astype(np.float32)
    elif spec.pattern == "waves":
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * u + 0.3 * np.sin(2 * np.pi * 2 * v)))
    elif spec.pattern == "dots":
        fu, fv = (4 * u) % 1 - 0.5, (4 * v) % 1 - 0.5
        w = (fu ** 2 + fv ** 2 < 0.09).astype(np.float32)
    else:  # gradient
        w = np.clip(0.5 + 0.6 * (u - u.mean()), 0, 1)
    a, b = np.array(COLORS[spec.color_a]), np.array(COLORS[spec.color_b])
    return w[..., None] * a + (1 - w[..., None]) * b


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Negative inside. Units of min(H, W)."""
    if shape == "circle":
        return np.sqrt(dx ** 2 + dy ** 2) - r
    if shape == "ring":
        return np.abs(np.sqrt(dx ** 2 + dy ** 2) - 0.7 * r) - 0.3 * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy)) / np.sqrt(2) - 0.75 * r
    # triangle pointing up: intersection of three half-planes
    k = np.sqrt(3.0)
    return np.maximum(np.maximum((k * dx - dy) / 2, (-k * dx - dy) / 2), dy) - 0.5 * r


def render_shape(spec: ShapeSpec, t: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (H, W), colour (H, W, 3)) of one shape at normalised time t in [0, 1]."""
    x, y = _grid(height, width)
    aspect_w, aspect_h = width / min(height, width), height / min(height, width)
    ddx, ddy = DIRECTIONS[spec.direction]
    cx = (spec.start[0] + ddx * spec.speed * t) * aspect_w
    cy = (spec.start[1] + ddy * spec.speed * t) * aspect_h
    dist = _signed_distance(spec.shape, x - cx, y - cy, spec.radius)
    softness = 1.2 / min(height, width) + 0.01  # soft edge of ~1-2 px at any size
    alpha = np.clip(0.5 - dist / (2 * softness), 0.0, 1.0)
    color = np.broadcast_to(np.array(COLORS[spec.color]), (height, width, 3)).copy()
    if spec.texture == "striped":
        stripes = (np.sin(2 * np.pi * 10 * (x - cx + y - cy)) > 0)[..., None]
        color = np.where(stripes, color, 0.55 * color)
    return alpha.astype(np.float32), color.astype(np.float32)


def render_clip(background: BackgroundSpec, shapes: list[ShapeSpec], num_frames: int, height: int, width: int):
    """-> full (F, H, W, 3), background (F, H, W, 3), visible alphas (K, F, H, W); floats in [0, 1]."""
    full_frames, bg_frames, alphas = [], [], []
    for f in range(num_frames):
        t = f / max(1, num_frames - 1)
        bg = render_background(background, t, height, width)
        composite = bg.copy()
        layers = [render_shape(s, t, height, width) for s in shapes]
        for alpha, color in layers:  # back to front, shape 1 is the backmost
            composite = alpha[..., None] * color + (1 - alpha[..., None]) * composite
        visible = []
        for k, (alpha, _) in enumerate(layers):
            occlusion = np.ones_like(alpha)
            for front_alpha, _ in layers[k + 1:]:
                occlusion *= 1 - front_alpha
            visible.append(alpha * occlusion)
        full_frames.append(composite)
        bg_frames.append(bg)
        alphas.append(np.stack(visible))
    return np.stack(full_frames), np.stack(bg_frames), np.stack(alphas, axis=1)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


# ---- writing ---------------------------------------------------------------------------------
def write_sample(folder: Path, spec: SyntheticSpec, index: int) -> dict:
    rng = np.random.default_rng([spec.seed, index])
    k = int(rng.integers(spec.min_foregrounds, spec.max_foregrounds + 1))
    background, shapes = random_scene(rng, k, hold_out_pairs=bool(spec.hold_out_pairs))
    full, bg, alphas = render_clip(background, shapes, spec.num_frames, spec.height, spec.width)
    folder.mkdir(parents=True, exist_ok=True)
    write_rgb_video(folder / FULL_FILE, to_uint8(full), spec.fps)
    write_rgb_video(folder / BACKGROUND_FILE, to_uint8(bg), spec.fps)
    masks = []
    for j in range(k):
        name = mask_file_name(j + 1)
        write_alpha_video(folder / name, to_uint8(alphas[j]), spec.fps)
        masks.append(name)
    captions = {"full": full_caption(shapes, background), "background": background.caption}
    for j, s in enumerate(shapes, start=1):
        captions["foreground" if j == 1 else f"foreground_{j}"] = s.caption
    metadata = {
        "captions": captions,
        "num_foregrounds": k,
        "masks": masks,
        "num_frames": spec.num_frames, "height": spec.height, "width": spec.width, "fps": spec.fps,
        "source": "synthetic",
        "scene": {"background": asdict(background), "foregrounds": [asdict(s) for s in shapes]},
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return metadata


def generate(out: str | Path, spec: SyntheticSpec) -> list[Path]:
    """Write spec.num_samples sample folders under out (sample_00000, ...); existing ones are kept."""
    out = Path(out)
    folders = []
    for i in range(spec.num_samples):
        folder = out / f"sample_{i:05d}"
        if not (folder / METADATA_FILE).exists():
            write_sample(folder, spec, i)
        folders.append(folder)
    (out / "synthetic_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return folders


def held_out_scenes(seed: int, count: int, num_foregrounds: int) -> list[tuple[BackgroundSpec, list[ShapeSpec]]]:
    """Scenes whose every foreground is a held-out (colour, shape) pair: with `hold_out_pairs` in the
    training spec, no training caption ever names these combinations."""
    scenes = []
    for i in range(count):
        rng = np.random.default_rng([seed, 2_000_003, i])
        background, shapes = random_scene(rng, num_foregrounds)
        for s in shapes:
            s.shape = held_out_shape(s.color)
        scenes.append((background, shapes))
    return scenes


def seen_pair_scenes(seed: int, count: int, num_foregrounds: int) -> list[tuple[BackgroundSpec, list[ShapeSpec]]]:
    """New scenes (a seed stream disjoint from generate's) drawn like the training data: every (colour,
    shape) pair is one that training captions do name. Against held_out_scenes, this separates following
    a prompt from composing an unseen pairing."""
    return [random_scene(np.random.default_rng([seed, 3_000_017, i]), num_foregrounds, hold_out_pairs=True)
            for i in range(count)]


def _placed_shape(rng: np.random.Generator, color: str, shape: str, direction: str) -> ShapeSpec:
    """A shape of the training distribution's size and speed whose whole path stays inside the frame."""
    speed, radius = float(rng.uniform(*SPEED)), float(rng.uniform(*RADIUS))
    dx, dy = DIRECTIONS[direction]
    lo, hi = radius + 0.02, 1 - radius - 0.02
    sx = rng.uniform(lo - min(0, dx) * speed, hi - max(0, dx) * speed)
    sy = rng.uniform(lo - min(0, dy) * speed, hi - max(0, dy) * speed)
    return ShapeSpec(shape=shape, color=color, texture="plain", direction=direction, radius=radius,
                     start=(float(sx), float(sy)), speed=speed)


def balanced_scenes(seed: int, count: int, num_foregrounds: int, held_out: bool) -> list[tuple[BackgroundSpec, list[ShapeSpec]]]:
    """Evaluation scenes (a seed stream disjoint from generate's) with balanced classes: scene i's first
    foreground has shape SHAPES[i % 4] and direction i // 4 % 4, so every shape and direction is prompted
    equally often. held_out: every foreground is a (colour, shape) pair training never draws; else every
    pair is one it does draw. Colours are distinct within a scene, backgrounds plain."""
    scenes = []
    directions = list(DIRECTIONS)
    for i in range(count):
        rng = np.random.default_rng([seed, 4_000_037 + int(held_out), num_foregrounds, i])
        shapes, used = [], set()
        for k in range(num_foregrounds):
            shape = SHAPES[i % len(SHAPES)] if k == 0 else str(rng.choice(SHAPES))
            direction = directions[(i // len(SHAPES)) % len(directions)] if k == 0 else str(rng.choice(directions))
            colours = [c for c in COLORS if c not in used and is_held_out_pair(c, shape) == held_out]
            if not colours:  # held-out pairs are few: fall back to the colour's own held-out shape
                color = str(rng.choice([c for c in COLORS if c not in used]))
                shape = held_out_shape(color) if held_out else str(rng.choice(
                    [s for s in SHAPES if not is_held_out_pair(color, s)]))
            else:
                color = str(rng.choice(colours))
            used.add(color)
            shapes.append(_placed_shape(rng, color, shape, direction))
        bg = str(rng.choice([c for c in COLORS if c not in used]))
        scenes.append((BackgroundSpec("plain", bg, bg, 0.0, (0.0, 0.0)), shapes))
    return scenes


def held_out_prompts(seed: int, count: int, num_foregrounds: int) -> list[dict]:
    """Captions for scenes never written to disk (seed stream disjoint from generate's), for evaluation."""
    prompts = []
    for i in range(count):
        rng = np.random.default_rng([seed, 1_000_003, i])
        background, shapes = random_scene(rng, num_foregrounds)
        prompts.append({"full": full_caption(shapes, background), "background": background.caption,
                        "foregrounds": [s.caption for s in shapes]})
    return prompts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    for name, field in SyntheticSpec.__dataclass_fields__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=field.default)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(**{k: getattr(args, k) for k in SyntheticSpec.__dataclass_fields__})
    folders = generate(args.out, spec)
    print(f"wrote {len(folders)} samples to {args.out}")


if __name__ == "__main__":
    main()
