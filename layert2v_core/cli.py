"""Command line: `python -m layert2v_core generate ...` writes a layer set for compositors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .attention_backend import BACKENDS as ATTENTION_BACKENDS

EXAMPLE = ("python -m layert2v_core generate --prompt 'a red circle over blue stripes' --bg-prompt 'blue stripes' "
           "--fg-prompt 'a red circle' --dit DIT.safetensors --vae VAE.safetensors --adapter ADAPTER "
           "--text-encoder TEXT_ENCODER_DIR --out out/")
WEIGHT_KEYS = ("dit", "vae", "adapter", "text_encoder")
MODEL_SETTINGS = ("width", "height", "frames", "steps", "cfg", "shift", "dtype")  # default: the model's (recommended.py)
MODELS_OWN = "default: the model's own (the adapter config's; else Wan2.1's)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layert2v_core", description="LayerT2V layered text-to-video")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate full video, background, foregrounds and alpha mattes")
    gen.add_argument("--prompt", required=True, help="the whole composited video")
    gen.add_argument("--bg-prompt", required=True, help="the clean background layer")
    gen.add_argument("--fg-prompt", action="append", required=True, help="one per foreground layer (repeat for K > 1)")
    gen.add_argument("--negative", default="", help="negative prompt, used for every layer")
    gen.add_argument("--frames", type=int, default=None, help="4k+1 frames per layer; " + MODELS_OWN)
    gen.add_argument("--width", type=int, default=None, help=MODELS_OWN)
    gen.add_argument("--height", type=int, default=None, help=MODELS_OWN)
    gen.add_argument("--steps", type=int, default=None, help=MODELS_OWN)
    gen.add_argument("--cfg", type=float, default=None, help=MODELS_OWN)
    gen.add_argument("--shift", type=float, default=None, help=MODELS_OWN)
    gen.add_argument("--sampler", default="unipc", choices=["euler", "unipc"])
    gen.add_argument("--seed", type=int, default=0)
    speed = gen.add_argument_group("speed (README: speed and benchmarks)")
    speed.add_argument("--step-cache", type=float, default=0.0, metavar="THRESHOLD",
                       help="reuse the DiT's residual on steps whose input barely changed (TeaCache); 0 = off")
    speed.add_argument("--cfg-start", type=float, default=0.0, help="fraction of the steps where guidance starts")
    speed.add_argument("--cfg-end", type=float, default=1.0,
                       help="fraction of the steps where guidance ends (e.g. 0.5: the unconditional pass runs in the first half)")
    speed.add_argument("--cfg-outside", default="skip", choices=["skip", "reuse"],
                       help="steps outside the guidance range: no guidance, or reuse the last guided difference")
    speed.add_argument("--attention", default="sdpa", choices=list(ATTENTION_BACKENDS),
                       help="attention kernel; refused with a message when not installed")
    gen.add_argument("--fps", type=float, default=16.0)
    gen.add_argument("--formats", default="png16,prores,h264", help="comma-separated export formats")
    gen.add_argument("--alpha-mode", default="straight", choices=["straight", "premultiplied"])
    # With none of the four weight options, the built-in demo model (layert2v_core/demo_model/) is used.
    gen.add_argument("--dit", help="Wan2.1 DiT weights (.safetensors file or diffusers folder)")
    gen.add_argument("--vae", help="Wan VAE weights (.safetensors file or diffusers folder)")
    gen.add_argument("--adapter", help="LayerT2V adapter (folder or .safetensors) or the authors' checkpoint folder")
    gen.add_argument("--use-ema", action="store_true", help="an authors' checkpoint folder's EMA weights (ema/ema_model.pt)")
    gen.add_argument("--text-encoder", help="folder with the UMT5 encoder and its tokenizer")
    gen.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="auto: " + MODELS_OWN)
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--out", required=True, help="output folder; one sub-folder per generation")
    given = gen.add_argument_group("conditional generation (layers you already have are kept)")
    given.add_argument("--full-video", help="decompose: a video or image folder used as the full layer")
    given.add_argument("--bg-video", help="foregrounds for this background (video or image folder)")
    given.add_argument("--fg-video", action="append", default=[],
                       help="background for this RGBA foreground (ProRes 4444 / WebM / PNG folder); repeat per foreground")
    given.add_argument("--given-mode", default="replace", choices=["replace", "native"],
                       help="replace works with any checkpoint; native needs conditional stage-2 training")
    given.add_argument("--trajectories", help='JSON (or a .json file): {"1": [[frame, x0, y0, x1, y1], ...]} normalized')
    given.add_argument("--trajectory-strength", type=float, default=0.8)
    given.add_argument("--trajectory-end-step", type=int, default=8)
    return parser


def given_layers(args, num_frames: int, height: int, width: int):
    """GivenLayers from --full-video / --bg-video / --fg-video, or None."""
    from .variants import GivenLayers
    from .video_in import read_clip

    if not (args.full_video or args.bg_video or args.fg_video):
        return None
    given = GivenLayers(foreground_is="straight")
    if args.full_video:
        given.full, _ = read_clip(args.full_video, num_frames, height, width)
    if args.bg_video:
        given.background, _ = read_clip(args.bg_video, num_frames, height, width)
    for k, path in enumerate(args.fg_video, start=1):
        rgb, alpha = read_clip(path, num_frames, height, width)
        if alpha is None:
            raise ValueError(f"--fg-video {path!r} has no alpha channel; give an RGBA clip (ProRes 4444, WebM VP9 "
                             "with alpha, or PNG frames with alpha)")
        given.foregrounds[k], given.alphas[k] = rgb, alpha
    return given


def trajectories(args, num_foregrounds: int):
    from .trajectory import parse_trajectories

    if not args.trajectories:
        return None
    text = args.trajectories
    if text.strip().endswith(".json") and Path(text).is_file():
        text = Path(text).read_text()
    return parse_trajectories(text, num_foregrounds)


def resolve_weights(args) -> dict:
    """The four weight paths; none given -> the built-in demo model. A partial set is refused: the
    demo's files do not fit other models, so they are never mixed in silently."""
    given = {k: getattr(args, k) for k in WEIGHT_KEYS}
    if not any(given.values()):
        from .demo_model import demo_model_paths

        try:
            paths = demo_model_paths()
        except FileNotFoundError as exc:
            raise SystemExit(f"error: no weights given and {exc}. Nothing is downloaded: give local files, e.g.\n  {EXAMPLE}")
        print("no weights given: using the built-in demo model (64x64, 17 frames, synthetic shapes)", file=sys.stderr)
        return paths
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if not v]
    if missing:
        raise SystemExit(
            f"error: no weights for {', '.join(missing)}. Give all four (or none, for the built-in demo "
            f"model); nothing is downloaded, e.g.\n  {EXAMPLE}"
        )
    for key, value in given.items():
        if not Path(value).exists():
            raise SystemExit(f"error: --{key.replace('_', '-')} {value!r} does not exist")
    return given


def apply_model_settings(args, config) -> None:
    """Every setting left out (None) or "auto" becomes the model's recommended one."""
    from .recommended import SamplingSettings

    chosen = SamplingSettings.of(config).fill(**{key: getattr(args, key) for key in MODEL_SETTINGS})
    for key, value in chosen.items():
        setattr(args, key, value)


def generate(args) -> Path:
    from .export import write_layer_set
    from .weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
    from .pipeline import LayerPrompts, LayerT2VPipeline
    from .sampler import SamplerConfig, speed_summary
    from .variants import sample_layers

    weights = resolve_weights(args)
    prompts = LayerPrompts(args.prompt, args.bg_prompt, list(args.fg_prompt), negative=args.negative)
    prompts.validate()

    dit = load_layered_dit(weights["dit"], weights["adapter"], dtype=args.dtype, device=args.device,
                           use_ema=args.use_ema)
    apply_model_settings(args, dit.config)
    config = SamplerConfig(steps=args.steps, cfg=args.cfg, shift=args.shift, sampler=args.sampler, seed=args.seed,
                           cache_threshold=args.step_cache, cfg_start=args.cfg_start, cfg_end=args.cfg_end,
                           cfg_outside=args.cfg_outside)
    config.validate()
    if args.attention != "sdpa":
        from .attention_backend import set_attention_backend

        set_attention_backend(dit, args.attention, device=args.device)
    layer_vae = load_layer_vae(weights["vae"], weights["adapter"], device=args.device, dit=dit)
    text = load_text_encoder(weights["text_encoder"], text_len=dit.config.text_len, dtype=args.dtype, device=args.device)
    pipe = LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text, device=args.device)

    layout = pipe.layout(len(prompts.foregrounds), args.frames, args.height, args.width)
    given = given_layers(args, args.frames, args.height, args.width)
    boxes = trajectories(args, layout.num_foregrounds)
    config.given_mode = args.given_mode
    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:
        conditioning = pipe.encode_prompts(prompts, guided=float(config.cfg) != 1.0)
        latent = sample_layers(pipe, layout, conditioning, config, given=given, trajectories=boxes,
                               trajectory_strength=args.trajectory_strength,
                               trajectory_end_step=args.trajectory_end_step, callback=lambda s: bar.update(1))
        layers = pipe.decode(latent, layout)
    with tqdm(total=None, desc="writing", unit="frame") as bar:
        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()
        result = write_layer_set(args.out, layers.rgb, layers.alpha_by_layer(), fps=args.fps,
                                 formats=[f.strip() for f in args.formats.split(",") if f.strip()],
                                 alpha_mode=args.alpha_mode, prompts={**prompts.slots(), "negative": args.negative},
                                 seed=args.seed, progress=progress,
                                 metadata={"steps": args.steps, "cfg": args.cfg, "shift": args.shift,
                                           "sampler": args.sampler, **speed_summary(config, pipe.last_sampling_stats)})
    return result.path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = generate(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    return 0
