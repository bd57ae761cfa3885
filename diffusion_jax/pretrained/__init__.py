"""Released weights: PyTorch weight files read without PyTorch (`weight_files`) and the DDPM U-Nets
of the diffusers format (`diffusers_unet`)."""
