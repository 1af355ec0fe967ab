"""Training: configuration, example streams from triplet shards, checkpoints and the trainer."""
