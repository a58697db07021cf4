"""sada-audio: training-free SADA acceleration for audio diffusion pipelines."""
