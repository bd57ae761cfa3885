"""Sample quality: feature networks (the FID Inception port, a digits classifier), FID / IS / KID
and statistics files (`scores`), reference statistics of a dataset, and in-memory scoring of a
model's samples (`sample_quality`)."""
