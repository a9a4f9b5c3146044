"""LayerT2V core: layered Wan2.1 text-to-video, independent of ComfyUI."""

__version__ = "0.1.0"
