"""The shipped production configs (regstn.yaml, seg.yaml, cnnlstm.yaml) train, as written
but for length, under 2-process torchrun with their loader workers (> 0, persistent):
a config that only parses is not known to work."""
from __future__ import annotations

import pytest

from engine_helpers import CONFIGS, explain, run_train, summary

pytestmark = pytest.mark.slow

SHORT = ["train.epochs=2", "train.max_steps_per_epoch=2", "logging.tensorboard=false",
         "viz_frames=2"]


@pytest.mark.parametrize("family, extra", [("regstn", []), ("seg", []),
                                           ("cnnlstm", ["data.clip_len=4"])])
def test_production_config_trains_with_loader_workers(engine_shards, tmp_path, family, extra):
    from lus_dist.families import load_run_config

    overrides = [f"data.root={engine_shards}", *SHORT, *extra]
    if family != "regstn":
        overrides.remove("viz_frames=2")
    cfg = load_run_config(family, CONFIGS / f"{family}.yaml", overrides)
    assert cfg.data.num_workers > 0, "the production configs read with loader workers"
    proc = run_train(family, tmp_path / family, overrides, config=f"{family}.yaml", timeout=600)
    assert proc.returncode == 0, explain(proc)
    s = summary(tmp_path / family)
    assert s["global_step"] == 4 and s["world_size"] == 2 and len(set(s["param_digests"])) == 1
    assert s["best_selected_on"] != s.get("test_split", "test")
    # more loader workers than CPUs is said once per run, not by torch at every loader
    from lus_dist.engine.data import usable_cpus
    assert proc.stdout.count("loader workers per rank") == (cfg.data.num_workers > usable_cpus())
    assert "This DataLoader will create" not in proc.stderr, explain(proc)
