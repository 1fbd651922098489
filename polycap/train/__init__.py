"""Training: the trainer, its settings, run folders, checkpoints, selection, trackers."""
