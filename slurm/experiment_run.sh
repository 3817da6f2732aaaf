#!/bin/bash
# One run of `lus experiment ... --launcher slurm`: `lus ARGS...` as a batch job of its own.
# The launcher (lus/experiment_slurm.py) submits this script once per run of the experiment's
# plan, with that stage's resources, --dependency=afterok on the runs it reads, and
# LUS_ROOT, LUS_PYTHON, RUN_DIR, NPROC_PER_NODE exported; there is nothing to set by hand.
# A training run goes through srun + torchrun like every train_*.sh, so it gets the same
# preemption handling (slurm/common.sh): USR1 before the time limit or from the scheduler ->
# checkpoint, exit 75, requeue, exact resume (`lus train --resume auto`). LUS_PLAIN=1 (the
# report job) runs `lus` as one process.
# The launcher's command line sets nodes, time, output and the rest per stage; these
# defaults only matter to a hand-made `sbatch`.
#SBATCH --job-name=lus-experiment
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

LUS_ROOT="${LUS_ROOT:?LUS_ROOT: the project folder (the launcher exports it)}"
# shellcheck source=slurm/common.sh
source "$LUS_ROOT/slurm/common.sh"

lus_init "$@"
if [[ "${LUS_PLAIN:-0}" == 1 ]]; then
    lus_run "$LUS_PY" -m lus "${LUS_ARGS[@]}"
else
    LUS_RUN_DIR="${RUN_DIR:-}"       # lus_step's progress check before a requeue
    lus_torchrun_cmd "${LUS_ARGS[@]}"
    lus_step "${LUS_CMD[@]}"
fi
