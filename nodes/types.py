"""The pack's own ComfyUI socket types (objects that only LayerT2V nodes understand)."""

from comfy_api.latest import io

LayerModel = io.Custom("LAYERT2V_MODEL")          # LayerT2VModel: layered DiT + its latent statistics
LayerVAE = io.Custom("LAYERT2V_VAE")              # LayerVAE: Wan VAE for RGB + MaskVAE for alpha
LayerTextEncoder = io.Custom("LAYERT2V_TEXT_ENCODER")
LayerConditioning = io.Custom("LAYERT2V_CONDITIONING")
LayerSet = io.Custom("LAYERT2V_LAYERS")           # decoded LayerFrames, ready to export

CATEGORY = "LayerT2V"
