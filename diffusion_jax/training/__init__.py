"""Training: the train state and its jitted step, the loop (`train_and_evaluate`), checkpoints, the
run's recorded config, metric logging and the one-writer lock of a workdir."""
