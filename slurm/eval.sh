#!/bin/bash
# Write the paper-style report (tables, confusion matrices, ROC, STN figures) for finished runs.
#
#   RUNS="runs/regstn-123 runs/cnnlstm-124" sbatch slurm/eval.sh --out reports/all
#   sbatch --dependency=afterok:<train job> --export=ALL,RUNS=runs/regstn-123 slurm/eval.sh
#   DRY_RUN=1 RUNS=runs/x bash slurm/eval.sh                # print the command only
#
# Environment: RUNS (space-separated run dirs), LUS_PYTHON or VIRTUAL_ENV.
# Arguments go to `lus eval`.
#SBATCH --job-name=lus-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# sbatch runs a copy of this file: find the project from the submitted path, else from here.
if [[ -z "${LUS_ROOT:-}" && -n "${SLURM_JOB_ID:-}" && "${DRY_RUN:-0}" != 1 && " $* " != *" --dry-run "* ]]; then
    LUS_ROOT="$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*Command=\([^ ]*\)\/slurm\/[^/ ]*.*/\1/p' || true)"
fi
LUS_ROOT="${LUS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# shellcheck source=slurm/common.sh
source "$LUS_ROOT/slurm/common.sh"

lus_init "$@"
: "${RUNS:?set RUNS to the run directories to report on}"
read -r -a runs <<< "$RUNS"
lus_step srun --ntasks=1 "$LUS_PY" -m lus eval "${runs[@]}" "${LUS_ARGS[@]}"
