"""`lus predict --seg-checkpoint` when the two runs were packed differently.

The segmentation run is the session's 64 px grayscale U-Net (tests/evaluation/conftest.py);
the frame run here is a Reg-STN trained by `lus train regstn` for a few steps on the same
phantom packed at 48 px with 3 channels (its accuracy is irrelevant: only its grid is).
Each model must get the clip prepared by its own run's preprocessing, and the overlay must
land on the markers of the frame grid: scored against the clip's ground-truth masks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
FRAME_SIZE, FRAME_CHANNELS = 48, 3


@pytest.fixture
def frame48_run(phantom, lus_ok):
    """Packed and trained once per session (inside the session's phantom dir), then reused."""
    shards, run = phantom / "shards48rgb", phantom / "runs" / "regstn48rgb"
    if not (shards / "manifest.json").is_file():
        lus_ok("prep", "pack", "--layout", "iclus", "--src", str(phantom / "raw" / "iclus"),
               "--out", str(shards), "--size", str(FRAME_SIZE), "--channels",
               str(FRAME_CHANNELS), "--workers", "1", "--quiet")
    if not (run / "summary.json").is_file():
        lus_ok("train", "regstn", "--run-dir", str(run), "--resume", "auto", f"data.root={shards}",
               "train.epochs=1", "train.max_steps_per_epoch=3", "data.batch_size=8",
               "viz_frames=0", "predict_splits=[]", "logging.progress=plain",
               "logging.tensorboard=false", "seed=0")
    return run


@pytest.fixture
def marker_clip(phantom, tmp_path):
    """64 px test frames that show B-lines or consolidations, as a .npy clip, with their true
    masks."""
    from lus_dist.shards.reader import ShardDataset
    ds = ShardDataset(phantom / "shards", split="test", with_masks=True)
    items = [ds[i] for i in range(len(ds))]
    items = [it for it in items if int((it["mask"] == 2).sum()) > 20][:12] + \
        [it for it in items if int((it["mask"] == 3).sum()) > 20][:12]        # b-lines, consolidations
    frames = np.stack([(it["image"][0].numpy() * 255).round().astype(np.uint8) for it in items])
    np.save(tmp_path / "markers.npy", frames)
    return tmp_path / "markers.npy", np.stack([it["mask"].numpy().astype(np.uint8) for it in items])


@pytest.mark.learning
def test_overlay_uses_each_runs_own_preprocessing(frame48_run, seg_run, marker_clip):
    from lus_dist.evaluation.predict import load_run, overlay_masks, read_clip, seg_masks
    from lus_dist.training.metrics import dice_iou, segmentation_confusion
    from lus_dist.shards.format import preprocess_mask
    clip, truth64 = marker_clip
    frame, seg = load_run(frame48_run, "regstn"), load_run(seg_run, "seg")
    assert (frame.preprocessing.size, frame.preprocessing.channels) == (FRAME_SIZE, FRAME_CHANNELS)
    assert (seg.preprocessing.size, seg.preprocessing.channels) == (64, 1)
    _, x_frame = read_clip(clip, frame.preprocessing)
    assert tuple(x_frame.shape[1:]) == (FRAME_CHANNELS, FRAME_SIZE, FRAME_SIZE)
    with pytest.raises(RuntimeError):        # the old bug: the frame model's input does not fit
        seg_masks(seg, x_frame)
    masks = overlay_masks(seg, clip, frame.preprocessing, x_frame)
    truth = np.stack([preprocess_mask(m, frame.preprocessing) for m in truth64])
    assert masks.shape == truth.shape == (len(truth), FRAME_SIZE, FRAME_SIZE)

    def dice(pred: np.ndarray) -> dict[str, float]:
        cm = segmentation_confusion(torch.from_numpy(pred), torch.from_numpy(truth), 4)
        return dice_iou(cm)["dice"]
    scores = dice(masks)
    assert scores["b_line"] >= 0.6 and scores["consolidation"] >= 0.6, scores
    # the same masks flipped left-right (a misplaced overlay) score far lower
    flipped = dice(masks[..., ::-1].copy())
    markers = ("b_line", "consolidation")
    assert np.mean([flipped[k] for k in markers]) < np.mean([scores[k] for k in markers]) - 0.2, \
        (flipped, scores)


def test_predict_cli_with_differently_packed_runs(frame48_run, seg_run, marker_clip, tmp_path,
                                                  lus_ok):
    from PIL import Image
    clip, truth = marker_clip
    out = tmp_path / "pred"
    lus_ok("predict", str(clip), "--checkpoint", str(frame48_run), "--seg-checkpoint",
           str(seg_run), "--out", str(out))
    rows = (out / "frames.csv").read_text().splitlines()
    assert len(rows) == len(truth) + 1
    with Image.open(out / "annotated.gif") as gif:      # 48 px upscaled x5 for viewing
        assert gif.n_frames == len(truth) and gif.size == (240, 240)
