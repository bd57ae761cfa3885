"""Released weights: PyTorch weight files read without PyTorch (`weight_files`), the DDPM U-Nets
of the diffusers format (`diffusers_unet`) and those models fetched by Hub name (`hub`)."""
