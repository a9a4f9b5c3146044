"""LayerT2V training: the paper's three stages on VidLayer-format data, one engine for CPU and multi-GPU.

stage1_mask_vae  mask VAE adaptation (projection head + decoder LoRA)
stage2_joint     joint full | background | foreground | mask training of the DiT adapter
stage3_multi_fg  extension to K foregrounds
Only the YAML config differs between the tiny CPU runs and the paper-scale Wan2.1-1.3B runs.
"""
