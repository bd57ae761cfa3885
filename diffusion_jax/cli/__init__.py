"""What the entry scripts do beyond library calls: their flags (`flags`), their console output
(`logs`) and the files sample.py writes (`sample_outputs`)."""
