"""`lus eval RUN [RUN ...]`: paper-shaped report (Markdown + CSV + PNG) for finished runs.

Every table is always written; a table no run could fill says which run lacked what
(e.g. "no seg run given"), so a report of a partial sweep still reads top to bottom.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lus_dist.engine import registry as families

from .report import Report, ReportError, generic_section, load_run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lus eval",
        description="Write paper-style reports for finished runs: Roy et al. Table 1 (frame F1, "
                    "Settings 1 and 2) and Table 2 (video F1/P/R over folds), segmentation "
                    "Dice/IoU, Barros et al.'s CNN-LSTM evaluation columns, confusion matrices, "
                    "ROC curves and STN localisation examples.",
        epilog="example:\n  lus eval runs/regstn-demo --out runs/regstn-demo/report\n"
               "  lus eval runs/regstn runs/cnn_sord runs/seg-unet runs/cnnlstm-fold* "
               "--aggregate runs/aggregate --out report/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories written by `lus train`")
    p.add_argument("--out", default=None, help="report folder (default: <first run>/report)")
    p.add_argument("--aggregate", default=None,
                   help="`lus aggregate --out` folder for the video table (default: train the "
                        "uninorm k-fold on each frame run's test predictions)")
    p.add_argument("--stn-examples", type=int, default=8, help="frames in the STN figure")
    return p


def evaluate(run_paths: list[str], out: str | None, aggregate: str | None = None,
             n_stn: int = 8) -> Report:
    runs = [load_run(p) for p in run_paths]
    out_dir = Path(out) if out else runs[0].path / "report"
    rep = Report("lus-dist report", out_dir)
    rep.text("Runs: " + ", ".join(f"`{r.path}` ({r.family}; best epoch picked on "
                                  f"`{r.summary.get('best_selected_on', '?')}`)" for r in runs))
    options = {"aggregate": aggregate, "stn_examples": n_stn}
    for name in families.names():
        family, mine = families.get(name), [r for r in runs if r.family == name]
        if family.report_section is None:   # no tables of its own: each run's test scores
            generic_section(rep, name, mine)
        else:
            family.report_section(rep, mine, options)
    rep.write()
    return rep


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rep = evaluate(args.runs, args.out, args.aggregate, args.stn_examples)
    except ReportError as exc:
        print(f"lus eval: {exc}", file=sys.stderr)
        return 2
    for t in rep.tables:
        if not t.is_filled():
            print(f"lus eval: incomplete table '{t.title}': {t.note or 'some cells n/a'}")
    print(f"report: {rep.out / 'report.md'}")
    return 0
