#!/bin/bash
#SBATCH --job-name=lus-tune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=logs/%x-%j.out
#
# A Ray Tune sweep inside a Slurm allocation: a Ray head on the first node, one Ray worker
# node on each of the others (all `ray start --block` under srun, so Slurm owns and cleans
# them), then `lus tune <args> --address <head>` from this batch step. Submit from the
# project root (the job log goes to logs/). The arguments are those of `lus tune`:
#
#   sbatch --nodes 4 slurm/tune.sh aggregator --predictions /shared/preds.h5 --trials 256 \
#          --storage /shared/tune --name agg-a --resume
#   sbatch --nodes 2 slurm/tune.sh regstn --config configs/regstn.yaml --workers 2 \
#          --storage /shared/tune
#
# --storage must be on a filesystem every node sees. With --resume a requeued job continues
# the sweep, keeping finished trials. Ray token authentication is on: a new token per job in
# $LUS_RAY_TOKEN_DIR/job-<id> (default ~/.lus/ray-tokens, mode 0700; file 0600, removed at
# the end), read by the head, the workers and `lus tune` through RAY_AUTH_TOKEN_PATH, so other
# users who can reach the nodes cannot submit work. The directory must be on storage every
# node sees ($HOME usually is). A trial that fails (a Ray node died) is retried
# LUS_TUNE_MAX_FAILURES times (default 2). Other knobs: LUS_PYTHON or VIRTUAL_ENV (see
# slurm/common.sh), LUS_RAY_TMP (short local temp dir), LUS_RAY_PORT_BASE,
# LUS_RAY_AUTH=disabled (not advised). DRY_RUN=1 prints the commands without running them.
set -euo pipefail

# sbatch runs a copy of this file: find the project from the submitted path, else from here.
if [[ -z "${LUS_ROOT:-}" && -n "${SLURM_JOB_ID:-}" && "${DRY_RUN:-0}" != 1 ]]; then
    LUS_ROOT="$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*Command=\([^ ]*\)\/slurm\/[^/ ]*.*/\1/p' || true)"
fi
LUS_ROOT="${LUS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# shellcheck source=slurm/common.sh
source "$LUS_ROOT/slurm/common.sh"
lus_init "$@"
if [[ ${#LUS_ARGS[@]} -eq 0 || "${LUS_ARGS[0]}" == -* ]]; then
    echo "usage: sbatch --nodes N slurm/tune.sh FAMILY [lus tune options] (FAMILY: aggregator, cnnlstm, pretrain, regstn, seg; see lus tune --help)" >&2
    exit 2
fi
PY=$LUS_PY
RAY_BIN=${RAY_BIN:-$(dirname "$PY")/ray}
export RAY_USAGE_STATS_ENABLED=0
# Not inherited from RAY_AUTH_MODE: single-machine `lus tune` users often export `disabled`.
export RAY_AUTH_MODE=${LUS_RAY_AUTH:-token}
export LUS_TUNE_MAX_FAILURES=${LUS_TUNE_MAX_FAILURES:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=${RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S:-600}

mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?run this under sbatch}")
NNODES=${#NODES[@]}
JOB=${SLURM_JOB_ID:?run this under sbatch (SLURM_JOB_ID unset)}
# One explicit port block per job (200 ports), so two sweeps on a node never collide.
BASE=${LUS_RAY_PORT_BASE:-$((20000 + (JOB % 200) * 200))}
GCS_PORT=$BASE
CPUS=${SLURM_CPUS_ON_NODE:-1}
TMP_ROOT=${LUS_RAY_TMP:-/tmp/ray-$JOB}   # Ray socket paths must stay < 107 bytes

TOKEN_FILE=""
if [[ "$RAY_AUTH_MODE" == token ]]; then
    TOKEN_FILE=${LUS_RAY_TOKEN_DIR:-$HOME/.lus/ray-tokens}/job-$JOB
    export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE
    unset RAY_AUTH_TOKEN               # would take precedence over the file
    lus_run "$PY" -m tune.ray_env token --out "$TOKEN_FILE"
fi

ip_of() { getent hosts "$1" | awk '{print $1; exit}'; }

HEAD=${NODES[0]}
HEAD_IP=$(ip_of "$HEAD")
ADDRESS="$HEAD_IP:$GCS_PORT"

# How the Ray steps stop at the end: `ray start --block` exits 1 when SIGTERM stops it (by
# design, ray._private.node), and a SIGTERM delivered by Slurm is logged as the step being
# cancelled: either reads as an error after every sweep. So each step runs under this wrapper,
# which the cleanup asks to stop with SIGWINCH (ignored by every Ray process, so only the
# wrapper acts on it): it stops Ray and ends the step with 0, while a Ray node that dies on its
# own still ends the step with Ray's exit code.
# shellcheck disable=SC2016  # expanded by the wrapper's own shell
RAY_STEP=(bash -c 'trap "kill -TERM \$ray; wait \$ray; exit 0" WINCH; "$@" & ray=$!; wait $ray' ray-step)
# A node drains before it stops (for Ray Serve's in-flight requests); at the end of a sweep
# there is nothing in flight, and the head's GCS stops at the same moment as its node.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}

# ray start for node index $1 on host $2; node i gets its own ports and temp dir, which
# also lets several Slurm "nodes" share one machine (the local test cluster does).
ray_node() {
    local i=$1 host=$2 ip
    ip=$(ip_of "$host")
    local p=$((BASE + 10 + (i % 4) * 40))   # 4 nodes per host fit the block
    local common=(--block --node-ip-address="$ip" --num-cpus="$CPUS"
                  --resources='{"TRAIN_DRIVER": 1}' --object-store-memory=100000000
                  --temp-dir="$TMP_ROOT-$i" --node-manager-port="$p"
                  --object-manager-port="$((p + 1))" --min-worker-port="$((p + 10))"
                  --max-worker-port="$((p + 39))" --disable-usage-stats)
    if [ "$i" -eq 0 ]; then
        lus_run srun --overlap --nodes=1 --ntasks=1 -w "$host" "${RAY_STEP[@]}" "$RAY_BIN" start --head \
            --port="$GCS_PORT" --include-dashboard=false \
            --ray-client-server-port=$((BASE + 1)) --dashboard-agent-listen-port=$((BASE + 2)) \
            --metrics-export-port=$((BASE + 3)) "${common[@]}" &
    else
        lus_run srun --overlap --nodes=1 --ntasks=1 -w "$host" "${RAY_STEP[@]}" "$RAY_BIN" start \
            --address="$ADDRESS" --dashboard-agent-listen-port=$((p + 2)) \
            --metrics-export-port=$((p + 3)) "${common[@]}" &
    fi
    PIDS+=($!)
}

PIDS=()
# shellcheck disable=SC2317  # reached through `trap cleanup EXIT`
cleanup() {
    # Stop the Ray steps (RAY_STEP above; `scancel --signal` leaves the batch shell alone and
    # takes signal numbers, not the name WINCH); if the controller cannot be reached, SIGTERM
    # to our sruns cancels the steps instead.
    if [[ "$DRY_RUN" != 1 && ${#PIDS[@]} -gt 0 ]]; then
        scancel --signal="$(kill -l WINCH)" "$JOB" 2>/dev/null || kill -TERM "${PIDS[@]}" 2>/dev/null || true
    fi
    wait || true
    if [[ -n "$TOKEN_FILE" ]]; then rm -f "$TOKEN_FILE"; fi
}
trap cleanup EXIT

echo "lus tune.sh: job $JOB, $NNODES node(s) ${NODES[*]}, Ray head $ADDRESS"
ray_node 0 "$HEAD"
lus_run "$PY" -m tune.ray_env wait --address "$ADDRESS" --nodes 1 --timeout 120
for ((i = 1; i < NNODES; i++)); do ray_node "$i" "${NODES[$i]}"; done
lus_run "$PY" -m tune.ray_env wait --address "$ADDRESS" --nodes "$NNODES" --timeout 180

set +e
lus_run "$PY" -m lus tune "${LUS_ARGS[@]}" --address "$ADDRESS"
rc=$?
set -e
echo "lus tune.sh: sweep exit code $rc"
exit $rc
