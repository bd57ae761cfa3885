"""Evaluating a trained run from its workdir: opening it (`run_loading`), evaluate.py's resumable
FID / IS / KID (`scoring`, `sample_store`) and bits/dim on a split (`bits_per_dim`)."""
