"""What the entry scripts do beyond library calls: their flags (`flags`), the training scripts'
command line (`training_command`), their console output (`logs`) and the files sample.py writes
(`sample_outputs`)."""
