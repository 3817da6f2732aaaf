"""`lus predict --seg-checkpoint` when the segmentation run was packed differently (issue 13).

The frame run is the session's 64 px grayscale Reg-STN; the segmentation run here is
trained by `lus train seg` on the same phantom packed at 48 px with 3 channels. Each model
must get the clip prepared by its own run's preprocessing, and the overlay must land on
the markers of the frame grid: scored against the ground-truth masks of the clip's frames.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
SEG_SIZE, SEG_CHANNELS = 48, 3


@pytest.fixture
def seg48_run(phantom, lus_ok):
    """Packed and trained once per session (inside the session's phantom dir), then reused."""
    shards, run = phantom / "shards48rgb", phantom / "runs" / "seg48rgb"
    if not (shards / "manifest.json").is_file():
        lus_ok("prep", "pack", "--layout", "iclus", "--src", str(phantom / "raw" / "iclus"),
               "--out", str(shards), "--size", str(SEG_SIZE), "--channels", str(SEG_CHANNELS),
               "--workers", "1", "--quiet")
    if not (run / "summary.json").is_file():
        lus_ok("train", "seg", "--run-dir", str(run), f"data.root={shards}", "train.epochs=3",
               "data.batch_size=16", "optim.lr=3e-3", "schedule.milestones=[]",
               "logging.progress=plain", "logging.tensorboard=false", "seed=0")
    return run


@pytest.fixture(scope="module")
def marker_clip(phantom, tmp_path_factory):
    """64 px test frames that show markers, as a .npy clip, with their true masks."""
    from lus_dist.shards.reader import ShardDataset
    ds = ShardDataset(phantom / "shards", split="test", with_masks=True)
    items = [ds[i] for i in range(len(ds))]
    items = [it for it in items if int((it["mask"] >= 2).sum()) > 20][:24]
    frames = np.stack([(it["image"][0].numpy() * 255).round().astype(np.uint8) for it in items])
    path = tmp_path_factory.mktemp("clip") / "markers.npy"
    np.save(path, frames)
    return path, np.stack([it["mask"].numpy() for it in items])


def test_overlay_uses_the_segmentation_runs_own_preprocessing(regstn_run, seg48_run, marker_clip):
    from lus_dist.evaluation.predict import load_run, overlay_masks, read_clip, seg_masks
    from lus_dist.metrics import dice_iou, segmentation_confusion
    clip, truth = marker_clip
    frame, seg = load_run(regstn_run, "regstn"), load_run(seg48_run, "seg")
    assert (frame.preprocessing.size, frame.preprocessing.channels) == (64, 1)
    assert (seg.preprocessing.size, seg.preprocessing.channels) == (SEG_SIZE, SEG_CHANNELS)
    _, x_frame = read_clip(clip, frame.preprocessing)
    with pytest.raises(RuntimeError):        # the old bug: the frame model's input does not fit
        seg_masks(seg, x_frame)
    masks = overlay_masks(seg, clip, frame.preprocessing, x_frame)
    assert masks.shape == truth.shape == (len(truth), 64, 64)
    scores = dice_iou(segmentation_confusion(torch.from_numpy(masks), torch.from_numpy(truth), 4))
    assert scores["dice"]["b_line"] >= 0.6, scores
    assert scores["dice"]["consolidation"] >= 0.6, scores
    # the same masks flipped left-right (a misplaced overlay) score far lower
    flipped = dice_iou(segmentation_confusion(torch.from_numpy(masks[..., ::-1].copy()),
                                              torch.from_numpy(truth), 4))
    assert flipped["dice"]["b_line"] < scores["dice"]["b_line"] - 0.2, (flipped, scores)


def test_predict_cli_with_a_differently_packed_segmentation_run(regstn_run, seg48_run, marker_clip,
                                                                tmp_path, lus_ok):
    from PIL import Image
    clip, truth = marker_clip
    out = tmp_path / "pred"
    lus_ok("predict", str(clip), "--checkpoint", str(regstn_run), "--seg-checkpoint",
           str(seg48_run), "--out", str(out))
    with Image.open(out / "annotated.gif") as gif:
        assert gif.n_frames == len(truth) and gif.size == (256, 256)
