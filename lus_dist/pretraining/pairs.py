"""Positive pairs for contrastive pretraining: two frames of one clip a short time apart.

USCL (Chen et al. 2021) and IVPP (2024) take positives from nearby frames of the same
ultrasound video: they show the same anatomy under small probe motion, a natural
augmentation no image transform imitates. Item i is frame i of the underlying frame
dataset (the anchor) plus a partner frame of the same video at most `max_gap` frames away,
so a `DistributedShardSampler(pairs.shard_ids, ...)` over the anchors keeps its shard-local,
resumable order. The partner depends only on (seed, epoch, i): any worker, any resume.

Labels ride along ("score": the frame score, -1 where the data has none, as POCUS;
"label": the clip class) for monitoring only; the contrastive loss never reads them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from lus_dist.shards.partition import epoch_rng
from lus_dist.shards.reader import ShardDataset


def partner_frame(frame: int, n_frames: int, max_gap: int, rng: np.random.Generator) -> int:
    """A frame of the same video, 1..max_gap away, uniform over the offsets inside the video.

    A one-frame video pairs the frame with itself (the augmentations still differ). Pure.
    """
    if max_gap < 1:
        raise ValueError(f"pair max_gap must be >= 1 frame, got {max_gap}")
    if not 0 <= frame < n_frames:
        raise ValueError(f"frame {frame} is outside a video of {n_frames} frames")
    lo, hi = max(0, frame - max_gap), min(n_frames - 1, frame + max_gap)
    if hi == lo:
        return frame
    pick = int(rng.integers(lo, hi))  # hi - lo candidates once the anchor is skipped
    return pick + (pick >= frame)


class FramePairs(Dataset):
    """Pairs over a frame-mode ShardDataset; items {"view1", "view2", "label", "score", ...}.

    Frames of a video are consecutive items of the frame dataset (the reader's index is
    built video by video), so the partner of item i is item i - frame + partner; this is
    checked at construction rather than assumed.
    """

    def __init__(self, frames: ShardDataset, max_gap: int = 4, seed: int = 0):
        if frames.mode != "frame" or frames.with_masks:
            raise ValueError("FramePairs needs a frame-mode ShardDataset without with_masks "
                             "(every frame of each video)")
        if max_gap < 1:
            raise ValueError(f"pair max_gap must be >= 1 frame, got {max_gap}")
        self.frames, self.max_gap, self.seed, self.epoch = frames, max_gap, seed, 0
        self.n_frames = frames.manifest.videos["n_frames"][frames.video_index]
        self.first = np.arange(len(frames)) - frames.frame_index
        if len(frames) and not (np.array_equal(frames.video_index[self.first], frames.video_index)
                                and (frames.frame_index[self.first] == 0).all()):
            raise ValueError(f"{frames.root}: frames of a video are not consecutive in the "
                             f"reader's index; FramePairs cannot find partners")

    @classmethod
    def open(cls, root, max_gap: int = 4, seed: int = 0, **select) -> "FramePairs":
        """Pairs over the frames of `root` chosen by ShardDataset filters (split, folds, ...)."""
        return cls(ShardDataset(root, mode="frame", seed=seed, **select), max_gap, seed)

    @property
    def manifest(self):
        """The frame dataset's manifest (which videos the run read, for summary.json)."""
        return self.frames.manifest

    @property
    def shard_ids(self) -> np.ndarray:
        """Shard of each anchor: what DistributedShardSampler partitions by."""
        return self.frames.shard_ids

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.frames.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def partner(self, i: int) -> int:
        """Dataset index of item i's partner frame for the current epoch."""
        frame = int(self.frames.frame_index[i])
        rng = epoch_rng(self.seed, self.epoch, i, 1)   # stream 1: distinct from clip draws
        return int(self.first[i]) + partner_frame(frame, int(self.n_frames[i]), self.max_gap, rng)

    def __getitem__(self, i: int) -> dict:
        anchor, j = self.frames[i], self.partner(i)
        return {"view1": anchor["image"], "view2": self.frames[j]["image"],
                "label": anchor["label"], "score": anchor["score"], "video": anchor["video"],
                "frame": anchor["frame"], "frame2": torch.tensor(self.frames.frame_index[j])}
