"""Command line: `python -m layert2v_core generate ...` writes a layer set for compositors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

EXAMPLE = ("python -m layert2v_core generate --prompt 'a red circle over blue stripes' --bg-prompt 'blue stripes' "
           "--fg-prompt 'a red circle' --dit DIT.safetensors --vae VAE.safetensors --adapter ADAPTER "
           "--text-encoder TEXT_ENCODER_DIR --out out/")
WEIGHT_KEYS = ("dit", "vae", "adapter", "text_encoder")
# Sampling defaults per model: the demo model was evaluated at these (training/eval_demo.py).
SAMPLING_DEFAULTS = {"demo": {"steps": 20, "cfg": 4.0, "shift": 3.0}, "given": {"steps": 30, "cfg": 5.0, "shift": 5.0}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layert2v_core", description="LayerT2V layered text-to-video")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate full video, background, foregrounds and alpha mattes")
    gen.add_argument("--prompt", required=True, help="the whole composited video")
    gen.add_argument("--bg-prompt", required=True, help="the clean background layer")
    gen.add_argument("--fg-prompt", action="append", required=True, help="one per foreground layer (repeat for K > 1)")
    gen.add_argument("--negative", default="", help="negative prompt, used for every layer")
    gen.add_argument("--frames", type=int, default=17, help="4k+1 frames per layer")
    gen.add_argument("--width", type=int, default=64)
    gen.add_argument("--height", type=int, default=64)
    gen.add_argument("--steps", type=int, default=None, help="default 20 on the built-in demo model, else 30")
    gen.add_argument("--cfg", type=float, default=None, help="default 4 on the built-in demo model, else 5")
    gen.add_argument("--shift", type=float, default=None, help="default 3 on the built-in demo model, else 5")
    gen.add_argument("--sampler", default="unipc", choices=["euler", "unipc"])
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=float, default=16.0)
    gen.add_argument("--formats", default="png16,prores,h264", help="comma-separated export formats")
    gen.add_argument("--alpha-mode", default="straight", choices=["straight", "premultiplied"])
    # With none of the four weight options, the built-in demo model (layert2v_core/demo_model/) is used.
    gen.add_argument("--dit", help="Wan2.1 DiT weights (.safetensors file or diffusers folder)")
    gen.add_argument("--vae", help="Wan VAE weights (.safetensors file or diffusers folder)")
    gen.add_argument("--adapter", help="LayerT2V adapter (folder or .safetensors)")
    gen.add_argument("--text-encoder", help="folder with the UMT5 encoder and its tokenizer")
    gen.add_argument("--dtype", default="fp32", choices=["bf16", "fp16", "fp32"])
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--out", required=True, help="output folder; one sub-folder per generation")
    return parser


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
        return {**paths, "demo": True}
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if not v]
    if missing:
        raise SystemExit(
            f"error: no weights for {', '.join(missing)}. Give all four (or none, for the built-in demo "
            f"model); nothing is downloaded, e.g.\n  {EXAMPLE}"
        )
    for key, value in given.items():
        if not Path(value).exists():
            raise SystemExit(f"error: --{key.replace('_', '-')} {value!r} does not exist")
    return {**given, "demo": False}


def apply_sampling_defaults(args, demo: bool) -> None:
    for key, value in SAMPLING_DEFAULTS["demo" if demo else "given"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def generate(args) -> Path:
    from .export import write_layer_set
    from .loading import load_layer_vae, load_layered_dit, load_text_encoder
    from .pipeline import LayerPrompts, LayerT2VPipeline
    from .sampler import SamplerConfig

    weights = resolve_weights(args)
    apply_sampling_defaults(args, weights["demo"])
    prompts = LayerPrompts(args.prompt, args.bg_prompt, list(args.fg_prompt), negative=args.negative)
    config = SamplerConfig(steps=args.steps, cfg=args.cfg, shift=args.shift, sampler=args.sampler, seed=args.seed)
    config.validate()
    prompts.validate()

    dit = load_layered_dit(weights["dit"], weights["adapter"], dtype=args.dtype, device=args.device)
    layer_vae = load_layer_vae(weights["vae"], weights["adapter"], device=args.device)
    text = load_text_encoder(weights["text_encoder"], text_len=dit.config.text_len, dtype=args.dtype, device=args.device)
    pipe = LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text, device=args.device)

    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:
        layers = pipe(prompts, args.frames, args.height, args.width, config, callback=lambda s: bar.update(1))
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
                                           "sampler": args.sampler})
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
