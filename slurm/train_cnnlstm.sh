#!/bin/bash
# Train the CNN-LSTM video classifier (Barros et al. 2021) with DDP over every node of the allocation.
#
#   sbatch slurm/train_cnnlstm.sh
#   CONFIG=configs/cnnlstm.yaml DATA=data/shards sbatch --nodes=2 slurm/train_cnnlstm.sh train.epochs=5
#   CPU_PROCS_PER_NODE=2 sbatch --cpus-per-task=2 slurm/train_cnnlstm.sh   # CPU-only nodes
#   DRY_RUN=1 bash slurm/train_cnnlstm.sh                      # print the commands only
#
# Environment: CONFIG, DATA, RUN_DIR (resumed with --resume auto after a requeue), LUS_PYTHON
# or VIRTUAL_ENV, NPROC_PER_NODE / CPU_PROCS_PER_NODE, MAX_RESTARTS, LUS_MAX_REQUEUES (default 10),
# LUS_USR1_RESEND_S (10). Arguments: key=value overrides.
# The output directory (logs/) must exist. Edit the defaults or override them on the command line:
#SBATCH --job-name=lus-cnnlstm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
# CPUs per node = ranks per node x (1 + data.num_workers): 4 GPUs x (1 + 2); lus doctor
# warns when the loader workers do not fit.
#SBATCH --cpus-per-task=12
# #SBATCH --gpus-per-node=4
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
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
lus_train cnnlstm
