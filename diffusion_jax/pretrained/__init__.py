"""Released weights: PyTorch weight files read without PyTorch (`weight_files`), the DDPM U-Nets
(`diffusers_unet`) and the KL autoencoders (`diffusers_autoencoder`) of the diffusers format, what
those converters share (`diffusers_format`), and models fetched by Hub name (`hub`)."""
