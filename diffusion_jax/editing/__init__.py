"""Editing with a trained diffusion model: every tool runs the samplers' steps from a given start.

`sdedit` (image-to-image from a noised input), `inpainting` (the replacement method and RePaint),
`interpolation` (the DDPM paper's stochastic one and the deterministic one through DDIM/ODE
latents). Progressive generation is `samplers.progressive`, progressive coding
`likelihood.rate_distortion`.
"""
