"""`lus experiment pocus`: the real-data experiment on the POCUS clips, end to end.

packs the clips -> 5-fold video-level CV, stratified by class (folds computed once, at pack
time, by patient = never a video in two folds) -> per fold (a) the CNN-LSTM of Barros et
al. and (b) a frame classifier whose out-of-fold frame probabilities feed the uninorm
aggregator -> report.md with the paper-shaped tables beside Barros et al.'s figures.

Frames of a POCUS clip carry no severity score; the frame classifier is trained on the
clip's class instead (every frame inherits its video's label, as Born et al. did), so the
packed per-frame target column holds the video label (said in the manifest provenance).
Training runs as `lus train` subprocesses (the same commands a cluster job runs), so the
same experiment scales up through config: larger `size`, longer schedules, torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpc.dist import child_env
from lus_dist.aggregator.train import AggregatorConfig
from lus_dist.config import ConfigError, load_config, save_config

# Barros et al. 2021 (Sensors 21:5486): Xception (ImageNet) + LSTM, 185 POCUS clips, 5-fold CV.
PUBLISHED = {"accuracy": 0.93, "covid_recall": 0.97}
PUBLISHED_SOURCE = ("Barros et al. 2021: ImageNet-pretrained Xception + LSTM, 185 clips, "
                    "5-fold CV; COVID recall = sensitivity")


@dataclass
class TrainStep:
    """One `lus train` family: a YAML (empty: the family's defaults) + overrides."""
    config: str = ""
    epochs: int = 8
    overrides: list[str] = field(default_factory=list)


def _cnnlstm_default() -> TrainStep:
    return TrainStep(epochs=20, overrides=[
        "model.kwargs={encoder: small_cnn, lstm_units: 64, dense_units: 64, dropout: 0.3}",
        "data.clip_len=10", "data.batch_size=4", "data.eval_batch_size=8", "optim.lr=1e-3",
        "data.balanced=true"])  # class-balanced draw: 23 COVID vs 47 healthy clips


def _frame_default() -> TrainStep:
    return TrainStep(epochs=12, overrides=[
        "model.name=cnn_ce", "frame_classes=[covid, pneumonia, healthy]",
        "data.batch_size=32", "data.eval_batch_size=64",
        "train.max_steps_per_epoch=30", "optim.lr=1e-3", "schedule.milestones=[]", "viz_frames=0"])


@dataclass
class PocusExperimentConfig:
    size: int = 64                 # frame side after packing (Barros et al.: 224)
    folds: int = 5
    seed: int = 0
    viral: str = "skip"            # Vir_* clips: skip | pneumonia
    include_images: bool = False   # stills as 1-frame videos (the CNN-LSTM needs clips)
    max_frames: int = 32           # per clip, evenly spaced (0: all); bounds CPU time
    pack_workers: int = 2
    parallel: int = 2              # training jobs at once (each one process, one thread)
    cnnlstm: TrainStep = field(default_factory=_cnnlstm_default)
    frame: TrainStep = field(default_factory=_frame_default)
    aggregator: AggregatorConfig = field(default_factory=lambda: AggregatorConfig(
        target="video_label", sord=False, zero_score_gap=0.0, epochs=30))
    aggregator_protocol: str = "stratified_kfold"
    # pick each fold's best epoch on the next fold (train on k-2 folds), never on the test fold
    select_on_next_fold: bool = True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus experiment",
        description="End-to-end experiments on real data. `pocus`: pack the POCUS clips, run "
                    "k-fold video-level CV (stratified by class) of (a) the CNN-LSTM and (b) a "
                    "frame classifier + uninorm aggregator, and write paper-style reports with "
                    "Barros et al.'s published figures beside ours.",
        epilog="example:\n  lus experiment pocus --data ../shared/data/pocus --out runs/pocus\n"
               "  lus experiment pocus --data DIR --out runs/big size=224 cnnlstm.epochs=40 "
               "frame.epochs=30\n  lus experiment pocus --data train_dir --test-data other_dir "
               "--out runs/held_out",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=["pocus"])
    p.add_argument("--data", required=True, help="POCUS-layout folder (videos/<probe>/...)")
    p.add_argument("--out", required=True, help="output folder (shards, runs, report)")
    p.add_argument("--folds", type=int, default=None, help="CV folds (default 5)")
    p.add_argument("--test-data", default=None,
                   help="train on --data, test on this folder (no CV)")
    p.add_argument("--config", default=None, help="experiment YAML (PocusExperimentConfig)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. size=128 cnnlstm.epochs=20")
    return p


# ---------------------------------------------------------------- data
def prepare_shards(cfg: PocusExperimentConfig, data: Path, out: Path,
                   test_data: Path | None = None):
    """Ingest (+ held-out folder) and pack; returns the manifest."""
    from data_prep.ingest_pocus import ingest_pocus, with_frame_labels
    from data_prep.pack import PackConfig, pack, provenance
    from lus_dist.shards.format import Preprocessing

    report = ingest_pocus(data, include_images=cfg.include_images, viral=cfg.viral)
    print(report.summary(), flush=True)
    if test_data is None:
        sources = [with_frame_labels(s, cfg.max_frames) for s in report.sources]
    else:
        held = ingest_pocus(test_data, include_images=cfg.include_images, viral=cfg.viral)
        print("held-out " + held.summary(), flush=True)
        sources = [with_frame_labels(s, cfg.max_frames, "train:", "train") for s in report.sources]
        sources += [with_frame_labels(s, cfg.max_frames, "test:", "test") for s in held.sources]
        report.skipped += held.skipped
    pcfg = PackConfig(preprocessing=Preprocessing(size=cfg.size), folds=cfg.folds,
                      split_seed=cfg.seed, shard_frames=512)
    prov = provenance("pocus", data, report.skipped, {
        "frame_target": "video label (POCUS frames have no severity score)",
        "max_frames_per_clip": cfg.max_frames, "viral": cfg.viral,
        "test_data": str(test_data) if test_data else None})
    return pack(sources, out, pcfg, prov, workers=cfg.pack_workers, progress=False)


# ---------------------------------------------------------------- training jobs
@dataclass
class Job:
    name: str
    family: str                    # cnnlstm | regstn (the frame classifier)
    run_dir: Path
    cmd: list[str]

    def done(self) -> bool:
        return (self.run_dir / "summary.json").is_file()


def train_cmd(family: str, step: TrainStep, run_dir: Path, shards: Path, fold: int | None,
              seed: int, val_fold: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "lus", "train", family, "--run-dir", str(run_dir)]
    if step.config:
        cmd += ["--config", step.config]
    cmd += [f"data.root={shards}", f"seed={seed}", f"train.epochs={step.epochs}",
            "logging.progress=plain", "logging.tensorboard=false"]
    if fold is not None:
        cmd.append(f"data.test_folds=[{fold}]")
        # picking the epoch on the test fold must be asked for by name (select_on_next_fold=false)
        cmd.append(f"data.val_folds=[{val_fold}]" if val_fold is not None else "data.val_split=test")
    else:  # held-out folder: the engine holds training patients out to pick the epoch, and
        # the aggregator trains on the training clips' frame scores
        cmd += ["data.train_split=train", "data.test_split=test"]
        cmd += ["predict_splits=[train,test]"] if family == "regstn" else []
    return cmd + list(step.overrides)


def _selection_text(cfg: PocusExperimentConfig, cv: bool) -> str:
    if not cv:
        return ("each model's best epoch is picked on held-out training patients "
                "(`data.val_split=holdout`, the engine's default); the --test-data clips only "
                "grade the models")
    if cfg.select_on_next_fold:
        return ("each fold's best epoch is picked on the next fold's clips (`data.val_folds`), "
                "so models train on k-2 folds and the test fold never influences them")
    return ("each fold's best epoch is picked on that fold's test clips "
            "(select_on_next_fold=false, `data.val_split=test`), which flatters both models")


def plan_jobs(cfg: PocusExperimentConfig, out: Path, shards: Path, cv: bool) -> list[Job]:
    folds: list[int | None] = list(range(cfg.folds)) if cv else [None]
    jobs = []
    for fold in folds:
        tag = f"fold{fold}" if fold is not None else "heldout"
        for family, step, sub in (("cnnlstm", cfg.cnnlstm, "cnnlstm"),
                                  ("regstn", cfg.frame, "frame")):
            run_dir = out / "runs" / sub / tag
            val = (fold + 1) % cfg.folds if fold is not None and cfg.select_on_next_fold else None
            jobs.append(Job(f"{sub}/{tag}", family, run_dir,
                            train_cmd(family, step, run_dir, shards, fold, cfg.seed, val)))
    return jobs


def run_jobs(jobs: list[Job], parallel: int, logs: Path) -> dict[str, int]:
    """Run up to `parallel` jobs at once; a finished run (summary.json) is not rerun, so
    re-invoking the experiment after an interruption continues where it stopped."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = [j for j in jobs if not j.done()]
    codes = {j.name: 0 for j in jobs if j.done()}
    running: list[tuple[Job, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < max(1, parallel):
            job = pending.pop(0)
            log = logs / (job.name.replace("/", "_") + ".log")
            print(f"[start] {job.name}: {shlex.join(job.cmd)}", flush=True)
            with log.open("w") as fh:
                running.append((job, subprocess.Popen(job.cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                      env=child_env()), time.time()))
        time.sleep(2)
        for item in list(running):
            job, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            codes[job.name] = proc.returncode
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"[{status}] {job.name} in {time.time() - t0:.0f} s", flush=True)
            if proc.returncode != 0:
                log = logs / (job.name.replace("/", "_") + ".log")
                print("\n".join(log.read_text().splitlines()[-15:]), flush=True)
    return codes


# ---------------------------------------------------------------- results
def frame_predictions_as_video_classes(preds):
    """Frame predictions named as the video classes. The frame classifier trains on the clip
    class with `frame_classes` = the video classes, so its predictions already are; a run
    trained through the 4-way score head keeps the first 3 columns, renormalised."""
    from lus_dist.aggregator.data import FramePredictions
    from lus_dist.shards.format import VIDEO_CLASSES

    if tuple(preds.class_names) == tuple(VIDEO_CLASSES):
        return preds
    k = len(VIDEO_CLASSES)
    p = preds.probs[:, :k]
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    return FramePredictions.from_arrays(
        p, preds.video_id, preds.patient_id, preds.frame_index, hospital_id=preds.hospital_id,
        frame_score=preds.frame_score, video_score=preds.video_score,
        video_label=preds.video_label, split=preds.split, class_names=VIDEO_CLASSES,
        source=preds.source)


def merge_predictions(parts: list):
    from lus_dist.aggregator.data import FramePredictions

    cols = ("video_id", "patient_id", "frame_index", "hospital_id", "frame_score",
            "video_score", "video_label", "split")
    cat = {c: np.concatenate([getattr(p, c) for p in parts]) for c in cols}
    return FramePredictions.from_arrays(
        np.concatenate([p.probs for p in parts]), cat.pop("video_id"), cat.pop("patient_id"),
        cat.pop("frame_index"), class_names=parts[0].class_names, source="out-of-fold", **cat)


def collect(cfg: PocusExperimentConfig, jobs: list[Job], out: Path, cv: bool = True):
    """Per-fold CNN-LSTM metrics, pooled out-of-fold frame predictions and the aggregator
    (k-fold over the pooled out-of-fold predictions; held-out: trained on the training
    clips' frame predictions, tested on the held-out clips)."""
    from lus_dist.aggregator.data import read_predictions, write_predictions
    from lus_dist.aggregator.train import run_protocol
    from lus_dist.evaluation.report import ReportError, cnnlstm_metrics, read_json

    res: dict = {"cnnlstm": [], "cnnlstm_runs": [], "frame_parts": [], "missing": []}
    for job in jobs:
        if not job.done():
            res["missing"].append(f"{job.name}: no summary.json (see logs/)")
            continue
        if job.family == "cnnlstm":
            m = cnnlstm_metrics(read_json(job.run_dir / "summary.json"))
            res["cnnlstm"].append(m or {})
            res["cnnlstm_runs"].append(job.run_dir)
            if m is None:
                res["missing"].append(f"{job.name}: summary.json has no test metrics")
            continue
        splits = ("test",) if cv else ("train", "test")
        try:
            for split in splits:
                preds = read_predictions(job.run_dir / "predictions" / f"{split}.h5")
                res["frame_parts"].append(frame_predictions_as_video_classes(preds))
        except (ReportError, ValueError) as exc:
            res["missing"].append(f"{job.name}: {exc}")
    if res["frame_parts"]:
        oof = merge_predictions(res["frame_parts"])
        write_predictions(out / "predictions" / "frame_out_of_fold.h5", oof)
        res["oof"] = oof
        n_patients = len(np.unique(oof.patient_id))
        protocol = cfg.aggregator_protocol if cv else "train_test"
        res["aggregate"] = run_protocol(oof, cfg.aggregator, protocol,
                                        k=min(cfg.folds, n_patients), seed=cfg.seed)
    return res


def write_report(cfg: PocusExperimentConfig, res: dict, out: Path, command: str,
                 wall: str, manifest, cv: bool = True) -> Path:
    from lus_dist.evaluation.report import (Report, ReportError, confusion_and_roc,
                                            decisions_metrics, frame_scores_of,
                                            read_video_predictions)
    from lus_dist.evaluation.tables import (cnnlstm_table, frame_table, mean_std,
                                            published_comparison, video_table)
    from lus_dist.evaluation.report import video_folds_of
    from lus_dist.shards.format import VIDEO_CLASSES

    rep = Report("POCUS experiment: CNN-LSTM and frame classifier + uninorm", out / "report")
    v = manifest.videos
    counts = {c: int((v["label"] == i).sum()) for i, c in enumerate(VIDEO_CLASSES)}
    rep.text(f"Command: `{command}`\n\nWall time: {wall} on {os.cpu_count()} CPU core(s)."
             f"\n\nData: {len(v['video_id'])} clips {counts}, {int(v['n_frames'].sum())} "
             f"frames packed at {cfg.size}x{cfg.size} (at most {cfg.max_frames or 'all'} evenly "
             f"spaced frames per clip); " + (
                 f"{cfg.folds}-fold CV stratified by class, folds by patient (no clip in two "
                 "folds), assigned once at pack time." if cv else "one model per route trained "
                 "on the --data clips and graded once on the --test-data clips (no CV).")
             + "\n\nConfig: `experiment.yaml`.")
    selection = _selection_text(cfg, cv)
    rep.text(f"Model selection: {selection}.\n\nCaveats: the uninorm's folds are drawn over "
             "the pooled out-of-fold frame predictions (stratified by class), not the pack folds. Barros et al.'s figures "
             "come from ImageNet-pretrained Xception at 224 px on 185 clips; ours from a small "
             "CNN trained from scratch on the clips available here.")
    if res["missing"]:
        rep.text("**Missing results**:\n\n" + "\n".join(f"- {m}" for m in res["missing"]))
    agg = res.get("aggregate")
    uni_folds = []
    if agg is not None:
        vids = agg.videos
        for f in sorted(set(vids["fold"])):
            sel = np.asarray(vids["fold"]) == f
            uni_folds.append(decisions_metrics(np.asarray(vids["target"])[sel],
                                               np.asarray(vids["uninorm"])[sel], VIDEO_CLASSES))
    keys = ("accuracy", "covid_recall")
    ours = {"CNN-LSTM": {k: mean_std([f.get(k) for f in res["cnnlstm"]]) for k in keys},
            "frame CNN + uninorm": {k: mean_std([f.get(k) for f in uni_folds]) for k in keys}}
    rep.table(published_comparison(ours, PUBLISHED, PUBLISHED_SOURCE), "published_vs_ours")
    rep.table(cnnlstm_table(res["cnnlstm"], VIDEO_CLASSES, note="" if res["cnnlstm"] else
                            "no finished CNN-LSTM fold"), "cnnlstm_evaluation")
    cnn_preds = []
    for run_dir in res["cnnlstm_runs"]:
        try:
            cnn_preds.append(read_video_predictions(run_dir / "predictions" / "test_videos.csv"))
        except ReportError as exc:
            rep.text(f"_Note: {exc}_")
    if cnn_preds:
        confusion_and_roc(rep, "cnnlstm", np.concatenate([y for y, _ in cnn_preds]),
                          np.concatenate([p for _, p in cnn_preds]), VIDEO_CLASSES,
                          "CNN-LSTM (test folds pooled)")
    rep.table(cnnlstm_table(uni_folds, VIDEO_CLASSES, title="Frame CNN + uninorm aggregator "
                            "(Barros et al. evaluation.csv columns)",
                            note="" if uni_folds else "no out-of-fold frame predictions"),
              "uninorm_evaluation")
    rep.table(video_table(video_folds_of(agg) if agg is not None else {},
                          note="video label target; aggregator CV over the pooled out-of-fold "
                               "frame predictions"), "video_table")
    tested = [p for p in res["frame_parts"] if (p.split == "test").all()]
    if tested:
        oof = merge_predictions(tested)
        rep.table(frame_table([frame_scores_of(f"{cfg_frame_name(cfg)} (out-of-fold)", oof)],
                              note="frame target = the clip's class, constant within a clip, so "
                                   "Setting 2 equals Setting 1 here"), "frame_table")
        confusion_and_roc(rep, "frame", oof.frame_score, oof.probs, VIDEO_CLASSES,
                          "Frame classifier (out-of-fold)")
    return rep.write()


def cfg_frame_name(cfg: PocusExperimentConfig) -> str:
    names = [o.split("=", 1)[1] for o in cfg.frame.overrides if o.startswith("model.name=")]
    return names[-1] if names else "frame model"


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    t0 = time.time()
    overrides = list(args.overrides) + ([f"folds={args.folds}"] if args.folds else [])
    try:
        cfg = load_config(PocusExperimentConfig, args.config, overrides)
        cfg.aggregator.validate()
    except (ConfigError, ValueError) as exc:
        print(f"lus experiment: {exc}", file=sys.stderr)
        return 2
    data = Path(args.data)
    test_data = Path(args.test_data) if args.test_data else None
    for d in (data, test_data):
        if d is not None and not (d / "videos").is_dir():
            print(f"lus experiment: {d}: not a POCUS-layout folder (no videos/ inside)",
                  file=sys.stderr)
            return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "report" / "experiment.yaml")
    command = shlex.join(["lus", "experiment", *(argv if argv is not None else sys.argv[1:])])
    try:
        manifest = prepare_shards(cfg, data, out / "shards", test_data)
    except Exception as exc:  # ingest/pack errors name the file; show them plainly
        print(f"lus experiment: packing failed: {exc}", file=sys.stderr)
        return 1
    print(f"packed {manifest.n_videos} clips, {manifest.n_frames} frames in "
          f"{time.time() - t0:.0f} s", flush=True)
    jobs = plan_jobs(cfg, out, out / "shards", cv=test_data is None)
    reused = sum(j.done() for j in jobs)
    codes = run_jobs(jobs, cfg.parallel, out / "logs")
    res = collect(cfg, jobs, out, cv=test_data is None)
    wall = f"{(time.time() - t0) / 60:.1f} min" + (
        f" ({reused} of {len(jobs)} training runs were finished by an earlier invocation and "
        "reused)" if reused else "")
    report = write_report(cfg, res, out, command, wall, manifest, cv=test_data is None)
    print("\n" + report.read_text())
    print(f"\nreport: {report}\nwall time: {(time.time() - t0) / 60:.1f} min")
    (out / "report" / "exit_codes.json").write_text(json.dumps(codes, indent=1))
    return 0 if all(c == 0 for c in codes.values()) else 1
