"""The run graph's rules, shared by the local and the Slurm launcher, on given facts: what is
left to launch and what each waits for, what a failure takes down, each run's state, and a
stage's sbatch command line."""
from __future__ import annotations

from pathlib import Path

import pytest

from lus.experiment import PocusExperimentConfig, plan_jobs
from lus.experiment_graph import (Resources, StageResources, check_graph, dependants, run_states,
                                  sbatch_argv, to_launch, topological, unfinished_text)
from lus.experiment_jobs import Job
from lus_dist.io.config import ConfigError, load_config


def job(name: str, *after: str, family: str = "regstn") -> Job:
    return Job(name, family, Path("/runs") / name, ["python", "-m", "lus", "train", family],
               after=list(after))


# pre -> frame -> lstm ; scratch (no deps) ; lstm2 reads frame too
GRAPH = [job("lstm", "frame", family="cnnlstm"), job("scratch"), job("frame", "pre"),
         job("pre", family="pretrain"), job("lstm2", "frame", family="cnnlstm")]


def test_the_read_run_comes_first_otherwise_plan_order():
    assert [j.name for j in topological(GRAPH)] == ["scratch", "pre", "frame", "lstm", "lstm2"]
    check_graph(GRAPH)
    with pytest.raises(ValueError, match="unknown runs"):
        check_graph([job("a", "nope")])
    with pytest.raises(ValueError, match="duplicate"):
        check_graph([job("a"), job("a")])
    with pytest.raises(ValueError, match="cycle"):
        check_graph([job("a", "b"), job("b", "a")])


def test_to_launch_skips_finished_and_live_runs_and_waits_only_for_unfinished_ones():
    first = {j.name: waits for j, waits in to_launch(GRAPH, set())}
    assert first == {"scratch": [], "pre": [], "frame": ["pre"], "lstm": ["frame"], "lstm2": ["frame"]}
    # a resubmission: pre finished, frame still queued from the first round (job 17)
    again = {j.name: waits for j, waits in to_launch(GRAPH, {"pre", "scratch"}, {"frame": "17"})}
    assert again == {"lstm": ["frame"], "lstm2": ["frame"]}
    assert to_launch(GRAPH, {j.name for j in GRAPH}) == []


def test_a_failure_takes_down_everything_that_reads_it_directly_or_not():
    assert dependants(GRAPH, {"pre"}) == {"frame": ["pre"], "lstm": ["pre"], "lstm2": ["pre"]}
    assert dependants(GRAPH, {"frame", "scratch"}) == {"lstm": ["frame"], "lstm2": ["frame"]}
    assert dependants(GRAPH, set()) == {}


def test_states_come_from_summaries_first_then_slurm():
    facts = {"pre": "FAILED", "frame": "CANCELLED", "lstm": "PENDING", "scratch": "COMPLETED"}
    states = run_states(GRAPH, {"scratch"}, facts)
    assert states["scratch"] == ("done", "")
    assert states["pre"] == ("failed", "")
    assert states["frame"] == ("cancelled", "reads pre, which failed")
    assert states["lstm2"] == ("cancelled", "reads pre, which failed")   # never submitted
    assert states["lstm"][0] == "cancelled"   # Slurm has not cancelled it yet: it will
    # a job that ended "COMPLETED" without a summary did not finish the run
    assert run_states(GRAPH, set(), {"scratch": "COMPLETED"})["scratch"] == (
        "failed", "completed, no summary.json")
    # cancelled by hand, nothing upstream failed: a failure of its own
    assert run_states(GRAPH, set(), {"scratch": "CANCELLED"})["scratch"] == ("failed", "cancelled")
    live = run_states(GRAPH, set(), {"pre": "RUNNING", "frame": "PENDING", "scratch": "REQUEUED"})
    assert [live[n][0] for n in ("pre", "frame", "scratch", "lstm")] == [
        "running", "pending", "pending", "not started"]
    text = unfinished_text(states, "/exp/logs")
    assert "`frame`: cancelled (reads pre, which failed)" in text and "`scratch`" not in text
    assert unfinished_text({"a": ("done", "")}, "/x") == ""


def test_sbatch_argv_carries_the_stage_resources_and_the_dependencies():
    res = Resources(nodes=2, procs_per_node=4, gpus_per_node=4, cpus_per_task=20, time="02:00:00",
                    partition="gpu", sbatch_args=["--account=lus", "--time=03:00:00"])
    argv = sbatch_argv("run.sh", ["train", "regstn", "seed=1"], res, "x:frame", "/l/frame.log",
                       {"RUN_DIR": "/r"}, after_ok=["11", "12"])
    assert argv[:2] == ["sbatch", "--parsable"] and argv[-4:] == ["run.sh", "train", "regstn", "seed=1"]
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=20", "--gpus-per-node=4",
                 "--partition=gpu", "--dependency=afterok:11:12", "--kill-on-invalid-dep=yes",
                 "--export=ALL,RUN_DIR=/r,NPROC_PER_NODE=4", "--output=/l/frame.log"):
        assert flag in argv, flag
    assert argv.index("--time=03:00:00") > argv.index("--time=02:00:00")   # extra flags win
    plain = sbatch_argv("run.sh", [], Resources(), "r", "/l", {}, after_any=["3", "4"])
    assert "--dependency=afterany:3:4" in plain
    assert not any(a.startswith(("--gpus", "--partition")) for a in plain)
    assert not any(a.startswith("--dependency") for a in sbatch_argv("run.sh", [], Resources(), "r", "/l", {}))


def test_stage_resources_are_config_with_one_line_errors():
    from lus.experiment_severity import SeverityExperimentConfig

    cfg = load_config(SeverityExperimentConfig, None, ["slurm.regstn.gpus_per_node=2",
                                                       "slurm.regstn.procs_per_node=2",
                                                       "slurm.report.partition=cpu"])
    assert cfg.slurm.regstn.gpus_per_node == 2 and cfg.slurm.report.partition == "cpu"
    assert StageResources().report.time == "01:00:00"
    with pytest.raises(ConfigError, match="one process per GPU"):
        Resources(procs_per_node=4, gpus_per_node=2)
    with pytest.raises(ConfigError, match=">= 1"):
        Resources(nodes=0)


def test_the_pocus_plan_is_a_graph_both_launchers_accept(tmp_path):
    jobs = plan_jobs(PocusExperimentConfig(folds=3), tmp_path, tmp_path / "shards", cv=True)
    check_graph(jobs)
    order = [j.name for j in topological(jobs)]
    assert all(order.index(a) < order.index(j.name) for j in jobs for a in j.after)
    taken = dependants(jobs, {"pretrain/seed0/fold0"})
    assert sorted(taken) == ["pretrained/cnnlstm/seed0/fold0", "pretrained/frame/seed0/fold0"]


# ---------------------------------------------------------------- the launchers' edges
def test_status_of_a_local_experiment_reads_its_run_dirs_and_exit_codes(tmp_path, capsys):
    """No Slurm involved: the local launcher's exit codes say failed / skipped."""
    import json

    from lus.experiment import main
    from lus.experiment_graph import SKIPPED
    from lus.experiment_slurm import write_plan

    jobs = [Job(j.name, j.family, tmp_path / "runs" / j.name, j.cmd, after=j.after) for j in GRAPH]
    write_plan(jobs, tmp_path)
    for name in ("scratch",):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text("{}")
    codes = {"scratch": 0, "pre": 2, "frame": SKIPPED, "lstm": SKIPPED, "lstm2": SKIPPED}
    (tmp_path / "report" / "exit_codes.json").write_text(json.dumps(codes))
    assert main(["status", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 failed, 3 cancelled" in out
    assert [line.split()[:2] for line in out.splitlines()[1:3]] == [["lstm", "cancelled"], ["scratch", "done"]]
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "plan.json: no such file" in capsys.readouterr().err


def test_submitting_without_slurm_or_a_lus_command_is_a_one_line_error(tmp_path, monkeypatch):
    from lus.experiment_slurm import SlurmError, lus_args, submit

    with pytest.raises(ValueError, match="not a `lus` command"):
        lus_args(Job("x", "regstn", tmp_path, ["python", "-c", "pass"]))
    assert lus_args(GRAPH[0]) == ["train", "cnnlstm"]
    monkeypatch.setenv("PATH", str(tmp_path))          # no sbatch, squeue, sacct here
    with pytest.raises(SlurmError, match="sbatch: not found"):
        submit(GRAPH, StageResources(), tmp_path, ["experiment"], "t")
    assert not (tmp_path / "report" / "slurm_jobs.json").read_text().strip("{}\n ")
