"""A run on disk and in time: the training loop, its run folder, checkpoints and records."""
