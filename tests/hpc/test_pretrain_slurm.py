"""`sbatch slurm/pretrain.sh` on the real local two-node cluster, then a CNN-LSTM job that
starts after it (`--dependency=afterok`) and trains on its exported encoder: the chain a
researcher submits, on the phantom."""
from __future__ import annotations

import pytest
import torch

from slurm_helpers import assert_done, submit_train, summary

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

COMMON = ["logging.tensorboard=false", "train.epochs=1", "data.num_workers=0"]
PRETRAIN = ["train.max_steps_per_epoch=3", "data.batch_size=8", "pretrain.knn_bank_frames=64",
            "model.kwargs.proj_hidden=64", "model.kwargs.proj_dim=32"]


def test_pretrain_sh_on_two_nodes_then_train_cnnlstm_sh_uses_its_encoder(slurm2, hpc_phantom,
                                                                         tmp_path):
    shards = hpc_phantom[1]
    pre_dir, lstm_dir = tmp_path / "pre" / "run", tmp_path / "lstm" / "run"
    pre_dir.parent.mkdir()
    lstm_dir.parent.mkdir()
    pre = submit_train(slurm2, shards, pre_dir, "--nodes=2", procs=1, overrides=PRETRAIN,
                       script="pretrain.sh", config="pretrain.yaml", common=COMMON)
    encoder = pre_dir / "encoder.pt"
    lstm = submit_train(slurm2, shards, lstm_dir, "--nodes=1", f"--dependency=afterok:{pre}",
                        procs=1, script="train_cnnlstm.sh", config="cnnlstm.yaml", common=COMMON,
                        overrides=["train.max_steps_per_epoch=2", "data.batch_size=2",
                                   "data.clip_len=4", f"model.kwargs.encoder_weights={encoder}",
                                   "model.kwargs.freeze_encoder=true"])
    assert_done(slurm2.wait(pre, timeout=600), slurm2.logs(pre))
    s = summary(pre_dir)
    assert s["family"] == "pretrain" and s["world_size"] == 2 and len(set(s["param_digests"])) == 1
    assert s["best_selected_on"] == "holdout"
    assert_done(slurm2.wait(lstm, timeout=600), slurm2.logs(lstm))
    exported = torch.load(encoder, map_location="cpu", weights_only=True)["state_dict"]
    best = torch.load(lstm_dir / "best.pt", map_location="cpu", weights_only=True)
    assert exported and all(torch.equal(best[f"encoder.{k}"], v) for k, v in exported.items())
    assert summary(lstm_dir)["family"] == "cnnlstm"
