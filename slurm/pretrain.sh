#!/bin/bash
# Contrastive self-supervised pretraining of a frame encoder over every node of the
# allocation (negatives from all ranks' batches); writes RUN_DIR/encoder.pt for a
# following training job:
#
#   sbatch slurm/pretrain.sh
#   RUN_DIR=runs/pre DATA=data/shards sbatch --nodes=2 slurm/pretrain.sh train.epochs=50
#   sbatch --dependency=afterok:<that job> slurm/train_cnnlstm.sh \
#       model.kwargs.encoder_weights=runs/pre/encoder.pt
#   DRY_RUN=1 bash slurm/pretrain.sh                           # print the commands only
#
# Environment: CONFIG, DATA, RUN_DIR (resumed with --resume auto after a requeue), LUS_PYTHON
# or VIRTUAL_ENV, NPROC_PER_NODE / CPU_PROCS_PER_NODE, MAX_RESTARTS, LUS_MAX_REQUEUES (default 10),
# LUS_USR1_RESEND_S (10). Arguments: key=value overrides.
# The output directory (logs/) must exist. Edit the defaults or override them on the command line:
#SBATCH --job-name=lus-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
# CPUs per node = ranks per node x (1 + data.num_workers): 4 GPUs x (1 + 2); lus doctor
# warns when the loader workers do not fit.
#SBATCH --cpus-per-task=12
# #SBATCH --gpus-per-node=4
#SBATCH --time=08:00:00
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
lus_train pretrain
