"""The CNN-LSTM feature cache: per-rank HDF5 files that read back as the encoder's clips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from functools import partial

from lus_dist.engine.features import FeatureClips, extract
from lus_dist.engine.logging import timed_progress
from lus_dist.models import CNNLSTM, CNNLSTMConfig
from lus_dist.shards.reader import ShardDataset


def test_cached_features_equal_the_encoder_on_the_clip(engine_shards, tmp_path, capsys):
    torch.manual_seed(0)
    model = CNNLSTM(CNNLSTMConfig(encoder="small_cnn", seq_len=4))
    for rank in (0, 1):   # two ranks' blocks, written by one process here
        extract(engine_shards, tmp_path, model.encoder, "small_cnn", rank=rank, world_size=2,
                batch_size=64, progress=partial(timed_progress, mode="plain") if rank == 0 else None)
    frames = len(ShardDataset(engine_shards, mode="frame"))
    block = (frames + 1) // 2
    said = capsys.readouterr().out.splitlines()   # rank 0's progress, at least its end
    assert said and said[-1] == (f"caching small_cnn features ({block} of {frames} frames on "
                                 f"rank 0), batches: {-(-block // 64)}/{-(-block // 64)}"), said
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


@pytest.mark.slow
def test_cnnlstm_on_cached_features_two_ranks_resumes_exactly(engine_shards, tmp_path):
    """features=cached (Barros et al.'s recipe): every rank caches its block of frames once
    with the frozen pretrained encoder, only the LSTM head trains, a resumed run reuses the
    cache and ends with the same weights as an uninterrupted one."""
    from lus_dist.models import ContrastiveModel, export_encoder

    from engine_helpers import explain, run_train, summary

    torch.manual_seed(0)
    encoder = export_encoder(ContrastiveModel("small_cnn", 1, 16, 16), tmp_path / "encoder.pt")
    args = [f"data.root={engine_shards}", "features=cached", f"model.kwargs.encoder_weights={encoder}",
            "data.batch_size=2", "data.clip_len=4", "train.deterministic=true", "optim.lr=3e-3",
            "logging.tensorboard=false", "data.num_workers=0"]
    ref = run_train("cnnlstm", tmp_path / "ref", [*args, "train.epochs=4"])
    assert ref.returncode == 0, explain(ref)
    s = summary(tmp_path / "ref")
    assert s["features"] == "cached" and len(set(s["param_digests"])) == 1
    cache = tmp_path / "ref" / "features"
    assert (cache / "DONE").is_file() and len(list(cache.glob("features-rank-*.h5"))) == 2
    best = torch.load(tmp_path / "ref" / "best.pt", map_location="cpu", weights_only=True)
    assert best and not any(k.startswith("encoder.") for k in best)       # the head alone

    run = tmp_path / "split"
    first = run_train("cnnlstm", run, [*args, "train.epochs=2"])
    assert first.returncode == 0, explain(first)
    stamp = (run / "features" / "DONE").stat().st_mtime_ns
    second = run_train("cnnlstm", run, [*args, "train.epochs=4"], resume="auto")
    assert second.returncode == 0 and "resumed from step-" in second.stdout, explain(second)
    assert (run / "features" / "DONE").stat().st_mtime_ns == stamp
    assert summary(run)["param_digests"] == s["param_digests"]
