"""Training of the base diffusion model (Lightning module, sampler, EMA, callbacks)."""
