"""Sweep set-up without a running cluster: Ray settings, schedulers, grid sizing, CLI errors."""
from __future__ import annotations

import pytest

from tune.ray_env import TRAIN_DRIVER_RESOURCE, RayOptions, init_kwargs, ray_env
from tune.spaces import parse_space
from tune.sweep import (SWEEP_FILE, SweepError, SweepOptions, build_tuner, make_scheduler,
                        param_space, resumed_trials)


def _space(max_t=1, **params):
    params = params or {"tnorm": {"choice": ["product", "lukasiewicz"]},
                        "lr": {"loguniform": [1e-3, 1e-1]}}
    space = parse_space({"family": "aggregator", "metric": "f1", "params": params})
    return space.__class__(**{**space.__dict__, "max_t": max_t})


def test_ray_env_is_explicit_and_quiet():
    env = ray_env({"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "1"})
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"       # never phone home
    assert env["RAY_AUTH_MODE"] == "token"              # a user's explicit choice is kept
    assert ray_env({})["RAY_AUTH_MODE"] == "disabled"   # ... and never left unset


def test_embedded_ray_binds_loopback_with_a_driver_slot():
    kw = init_kwargs(RayOptions(num_cpus=2))
    assert kw["_node_ip_address"] == "127.0.0.1" and kw["include_dashboard"] is False
    assert kw["address"] == "local"     # a cluster of its own, never the machine's latest
    assert kw["resources"] == {TRAIN_DRIVER_RESOURCE: 1}
    assert 75 * 2**20 <= kw["object_store_memory"] <= 256 * 2**20
    assert len(kw["_temp_dir"]) < 40   # Ray's socket paths under it must stay < 107 bytes
    joined = init_kwargs(RayOptions(address="10.1.2.3:6379"))
    assert joined["address"] == "10.1.2.3:6379" and "resources" not in joined


def test_trial_output_reaches_the_driver_only_on_request_without_the_cleaner_warning(caplog):
    import logging

    from tune.ray_env import PG_CLEANER_LOGGER, PG_CLEANER_WARNING, quiet_worker_logs

    for opts in (RayOptions(), RayOptions(address="10.1.2.3:6379")):
        assert init_kwargs(opts)["log_to_driver"] is True
        hook = init_kwargs(opts)["runtime_env"]["worker_process_setup_hook"]
        assert hook == "tune.ray_env.quiet_worker_logs"      # every worker process runs it
    assert init_kwargs(RayOptions(log_to_driver=False))["log_to_driver"] is False
    quiet_worker_logs()
    cleaner = logging.getLogger(PG_CLEANER_LOGGER)
    with caplog.at_level(logging.WARNING, logger=PG_CLEANER_LOGGER):
        cleaner.warning(PG_CLEANER_WARNING + ". State API may be temporarily unavailable.")
        cleaner.warning("Detected that the Ray Train controller actor (x) is dead.")
    assert [r.getMessage() for r in caplog.records] == [
        "Detected that the Ray Train controller actor (x) is dead."]


def test_schedulers():
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, PopulationBasedTraining

    asha = make_scheduler(SweepOptions(scheduler="asha", grace_period=3), _space(max_t=10))
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert isinstance(make_scheduler(SweepOptions(scheduler="fifo"), _space()), FIFOScheduler)
    assert isinstance(make_scheduler(SweepOptions(scheduler="pbt"), _space(max_t=8)),
                      PopulationBasedTraining)
    with pytest.raises(SweepError, match="PBT perturbs between reports"):
        make_scheduler(SweepOptions(scheduler="pbt"), _space(max_t=1))


def test_grid_runs_every_point_trials_over_grid_times():
    space = _space(a={"choice": [1, 2, 3]}, b={"choice": ["x", "y"]})
    pspace, samples, total = param_space(SweepOptions(search="grid", trials=12), space)
    assert samples == 2 and total == 12 and set(pspace) == {"a", "b"}
    assert param_space(SweepOptions(search="random", trials=12), space)[1:] == (12, 12)
    assert param_space(SweepOptions(search="random"), space)[1:] == (16, 16)   # the default


def test_a_resumed_sweep_keeps_its_trial_count_and_says_so(tmp_path):
    assert resumed_trials(tmp_path, 3) is None          # not recorded (an older sweep)
    (tmp_path / SWEEP_FILE).write_text('{"trials": 2}')
    assert resumed_trials(tmp_path, None) == resumed_trials(tmp_path, 2) == 2
    with pytest.raises(SweepError, match="is a sweep of 2 trials .* for 3 trials start a new"):
        resumed_trials(tmp_path, 3)


def test_trial_lines_say_each_finished_trial_and_the_best():
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from tune.progress import TrialLines

    lines = TrialLines("f1", "max", total=3, every_s=3600)
    out = []
    lines.say = out.append
    a = SimpleNamespace(trial_id="t0", status=Trial.RUNNING, last_result={})
    b = SimpleNamespace(trial_id="t1", status=Trial.RUNNING, last_result={})
    lines.on_trial_result(1, [a, b], b, {"f1": 0.4, "done": True})   # stopped by the scheduler
    a.last_result = {"f1": 0.8, "training_iteration": 3, "time_total_s": 2.0}
    lines.on_trial_complete(1, [a, b], a)
    a.status = Trial.TERMINATED
    b.last_result = {"f1": 0.4, "training_iteration": 1, "time_total_s": 0.5}
    lines.on_trial_complete(2, [a, b], b)
    b.status = Trial.TERMINATED
    lines.on_trial_error(3, [a, b], SimpleNamespace(trial_id="t2"))
    assert out == ["trial 1/3 t0 done, f1=0.8 (3 reports, 2.0 s); best 0.8 (t0)",
                   "trial 2/3 t1 stopped early, f1=0.4 (1 report, 0.5 s); best 0.8 (t0)",
                   "trial 3/3 t2 FAILED (listed at the end)"]


def test_existing_sweep_dir_needs_resume(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "junk.txt").write_text("x")
    with pytest.raises(SweepError, match="pass --resume"):
        build_tuner(lambda cfg: None, _space(), SweepOptions(storage=str(tmp_path), name="s"))
    with pytest.raises(SweepError, match="no restorable Tune state"):
        build_tuner(lambda cfg: None, _space(),
                    SweepOptions(storage=str(tmp_path), name="s", resume=True))


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    from tune.cli import main

    preds = tmp_path / "p.h5"
    assert main(["aggregator", "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err
    assert f"{preds}: --predictions file not found" in err and err.count(str(preds)) == 1
    bad = tmp_path / "space.yaml"
    bad.write_text("family: aggregator\nmetric: f1\nparams: {tnrom: {choice: [product]}}\n")
    assert main(["aggregator", "--space", str(bad), "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err
    assert "space.yaml" in err and "tnrom" in err and "Traceback" not in err
    seg_space = tmp_path / "seg.yaml"
    seg_space.write_text("family: seg\nmetric: d\nparams: {optim.lr: {choice: [0.1]}}\n")
    assert main(["aggregator", "--space", str(seg_space), "--predictions", str(preds)]) == 2
    assert "is a seg space, not aggregator" in capsys.readouterr().err
