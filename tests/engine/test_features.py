"""The CNN-LSTM feature cache: per-rank HDF5 files that read back as the encoder's clips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lus_dist.engine.features import FeatureClips, extract
from lus_dist.models import CNNLSTM, CNNLSTMConfig
from lus_dist.shards.reader import ShardDataset


def test_cached_features_equal_the_encoder_on_the_clip(engine_shards, tmp_path):
    torch.manual_seed(0)
    model = CNNLSTM(CNNLSTMConfig(encoder="small_cnn", seq_len=4))
    for rank in (0, 1):   # two ranks' blocks, written by one process here
        extract(engine_shards, tmp_path, model.encoder, "small_cnn", rank=rank, world_size=2)
    clips = ShardDataset(engine_shards, split="test", mode="clip", clip_len=4)
    cached = FeatureClips(tmp_path, clips.video_index, clips.labels, clip_len=4)
    assert len(cached) == len(clips)
    item, ref = cached[1], clips[1]
    model.eval()
    with torch.no_grad():
        want = model.encode(ref["frames"][None])[0]
    assert item["frames"].shape == (4, model.feature_dim)
    torch.testing.assert_close(item["frames"], want, rtol=1e-4, atol=1e-5)
    assert int(item["video"]) == int(ref["video"]) and int(item["label"]) == int(ref["label"])
    head = CNNLSTM.from_features(model.feature_dim, CNNLSTMConfig(seq_len=4))
    assert head(torch.stack([cached[i]["frames"] for i in range(3)])).shape == (3, 3)


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no features-rank"):
        FeatureClips(tmp_path, np.arange(2), np.zeros(2, int))
