"""The shard format: the one place the packer writes by and the reader reads by.

Extend here (schema version, dataset and attribute names, checksum rule); never
re-declare these names elsewhere.
"""
from __future__ import annotations

SCORE_CLASSES: tuple[str, ...] = ("score0", "score1", "score2", "score3")
VIDEO_CLASSES: tuple[str, ...] = ("covid", "pneumonia", "healthy")
MASK_CLASSES: tuple[str, ...] = ("background", "pleural_line", "b_line", "consolidation")
UNKNOWN = -1  # label / score not annotated
