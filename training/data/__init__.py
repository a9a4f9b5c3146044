"""Layered-video data: VidLayer folder reader, synthetic generator, resumable order, latent cache."""
