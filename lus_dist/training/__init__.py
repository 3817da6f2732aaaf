"""Losses, metrics and augmentations that the families train and score with."""
