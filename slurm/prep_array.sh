#!/bin/bash
# Pack raw LUS data into HDF5 shards with a job array, then finalize (manifest.json) in a job
# that starts only if every array task succeeded (--dependency=afterok).
#
# From the project root, with sbatch (a 1-CPU job submits both) or bash (submits them from here
# and prints their ids); task logs go to logs/ (made if missing):
#   SRC=data/raw/pocus OUT=data/shards LAYOUT=pocus sbatch slurm/prep_array.sh --size 64
#   SRC=data/raw/iclus OUT=data/shards LAYOUT=iclus TASKS=3 bash slurm/prep_array.sh --size 64
#   DRY_RUN=1 SRC=... OUT=... bash slurm/prep_array.sh      # print the sbatch commands only
# Every task computes the same plan and writes only its own shards, skipping those already
# written and verified: after a failed task, run the same command again and only the missing
# shards are packed. Arguments after the variables go to `lus prep pack`.
#
# Environment: SRC, OUT, LAYOUT (iclus|pocus), TASKS (array size, default 4), LUS_PYTHON or
# VIRTUAL_ENV, SBATCH_ARGS (extra sbatch options for both jobs, e.g. "--partition=cpu").
#SBATCH --job-name=lus-prep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
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
: "${SRC:?set SRC to the raw data folder}" "${OUT:?set OUT to the shard folder}"

case "${LUS_PREP_STAGE:-submit}" in
    pack)      # one array task: lus prep reads SLURM_ARRAY_TASK_ID/COUNT itself
        lus_run "$LUS_PY" -m lus prep pack --layout "${LAYOUT:-iclus}" --src "$SRC" --out "$OUT" \
            --quiet "${LUS_ARGS[@]}" ;;
    finalize)
        lus_run "$LUS_PY" -m lus prep finalize "$OUT" ;;
    submit)
        lus_prep_submit "${TASKS:-4}" "$LUS_ROOT/slurm/prep_array.sh" ;;
    *)
        echo "prep_array.sh: LUS_PREP_STAGE must be submit, pack or finalize" >&2; exit 2 ;;
esac
