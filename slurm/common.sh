# shellcheck shell=bash
# Shared logic of the lus sbatch scripts; sourced, never run. One place for:
#   - finding the project's python   (LUS_PYTHON, else $VIRTUAL_ENV/bin/python,
#                                     else $LUS_ROOT/.venv/bin/python, else python3)
#   - the rendezvous                 (first host of the allocation, port from the job id)
#   - processes per node             (NPROC_PER_NODE, else GPUs per node, else
#                                     CPU_PROCS_PER_NODE (default 1) on CPU-only nodes)
#   - preemption                     (USR1 to the batch shell is forwarded to the trainers;
#                                     a requeue asked for by any node -> scontrol requeue,
#                                     at most LUS_MAX_REQUEUES times, only while the run
#                                     makes progress; see hpc/requeue.py)
#   - DRY_RUN=1 / --dry-run          (print the exact commands instead of running them)
#
# Launching: one `python -m hpc.launch` (torchrun, keeping the requeue exit code and leaving
# USR1 to the workers) per node through srun, c10d rendezvous, --rdzv-id $SLURM_JOB_ID.

# The requeue exit code (75, hpc.signals.REQUEUE_EXIT_CODE) is read by hpc.requeue only.

# Elastic restarts: a fresh rendezvous store per restart (see hpc/dist.py).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1

# lus_init "$@": read --dry-run, set LUS_PY and LUS_ARGS (the remaining arguments).
lus_init() {
    LUS_ARGS=()
    local a
    for a in "$@"; do
        if [[ "$a" == "--dry-run" ]]; then DRY_RUN=1; else LUS_ARGS+=("$a"); fi
    done
    DRY_RUN="${DRY_RUN:-0}"
    LUS_PY="$(lus_python)"
    export PYTHONPATH="$LUS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
        local job="$SLURM_JOB_ID"     # an array task by the name its log file carries (%A_%a)
        [[ -n "${SLURM_ARRAY_JOB_ID:-}" ]] && job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}"
        echo "lus: job $job ${SLURM_JOB_NAME:-(no name)} on ${SLURM_JOB_NODELIST:-$(hostname)}" \
             "restart ${SLURM_RESTART_COUNT:-0} python $LUS_PY"
    else
        echo "lus: not in a Slurm job ($([[ "$DRY_RUN" == 1 ]] && echo "dry run, ")host $(hostname))" \
             "python $LUS_PY"
    fi
}

lus_python() {
    if [[ -n "${LUS_PYTHON:-}" ]]; then echo "$LUS_PYTHON"
    elif [[ -n "${VIRTUAL_ENV:-}" ]]; then echo "$VIRTUAL_ENV/bin/python"
    elif [[ -x "$LUS_ROOT/.venv/bin/python" ]]; then echo "$LUS_ROOT/.venv/bin/python"
    else command -v python3
    fi
}

# lus_run CMD...: run it, or print it (shell-quoted, one line, prefixed "+ ") in dry-run mode.
lus_run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
        return 0
    fi
    "$@"
}

# lus_rdzv: LUS_NNODES, LUS_MASTER_ADDR, LUS_MASTER_PORT for this allocation.
lus_rdzv() {
    local nodelist="${SLURM_JOB_NODELIST:-localhost}"
    LUS_NNODES="${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}"
    LUS_MASTER_ADDR=""
    if [[ "$DRY_RUN" != 1 ]]; then  # a dry run must not wait for (or look up) a controller
        LUS_MASTER_ADDR="$(scontrol show hostnames "$nodelist" 2>/dev/null | head -n1 || true)"
    fi
    if [[ -z "$LUS_MASTER_ADDR" ]]; then  # dry run, or no scontrol: the same parser in python
        LUS_MASTER_ADDR="$("$LUS_PY" -c 'import sys; from hpc.world import expand_nodelist
print(expand_nodelist(sys.argv[1])[0])' "$nodelist")"
    fi
    # Mirrors hpc.world.port_from_job_id: two jobs sharing a node get different ports.
    LUS_MASTER_PORT=$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))
}

# lus_nproc_per_node: training processes per node.
lus_nproc_per_node() {
    local gpus="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}"
    gpus="${gpus##*:}"                       # "a100:4" -> "4"
    if [[ -n "${NPROC_PER_NODE:-}" ]]; then echo "$NPROC_PER_NODE"
    elif [[ "$gpus" =~ ^[1-9][0-9]*$ ]]; then echo "$gpus"
    else echo "${CPU_PROCS_PER_NODE:-1}"
    fi
}

# lus_torchrun_cmd ARGS...: fill LUS_CMD with srun + one torchrun per node running `lus ARGS`.
lus_torchrun_cmd() {
    lus_rdzv
    LUS_CMD=(srun --nodes="$LUS_NNODES" --ntasks="$LUS_NNODES" --ntasks-per-node=1
             --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1
             "$LUS_PY" -m hpc.launch --nnodes="$LUS_NNODES"
             --nproc-per-node="$(lus_nproc_per_node)" --rdzv-backend=c10d
             --rdzv-endpoint="$LUS_MASTER_ADDR:$LUS_MASTER_PORT" --rdzv-id="${SLURM_JOB_ID:-0}"
             --max-restarts="${MAX_RESTARTS:-0}" -m lus "$@")
}

# lus_step CMD...: run a job step in the background so the batch shell can take USR1
# (#SBATCH --signal=B:USR1@...) and pass it on, again every LUS_USR1_RESEND_S seconds until the
# step ends (a trainer still starting up ignores it). Then hpc.requeue decides from what the
# shell saw (USR1 forwarded, srun's exit code, the launchers' requeue markers, LUS_MAX_REQUEUES,
# checkpoint progress): `scontrol requeue`, or return an exit code with one line saying why.
# LUS_RUN_DIR (set by lus_train) enables the progress check and holds the markers.
lus_step() {
    if [[ "$DRY_RUN" == 1 ]]; then
        lus_run "$@"
        return 0
    fi
    local job="${SLURM_JOB_ID:-local}" run_dir="${LUS_RUN_DIR:-}" before=none started rc verdict
    local progress=()
    started="$(date +%s)"
    export LUS_REQUEUE_MARKER_DIR="${run_dir:-${TMPDIR:-/tmp}}/.lus-requeue/$job"
    rm -rf "$LUS_REQUEUE_MARKER_DIR"
    if [[ -n "$run_dir" ]]; then
        before="$("$LUS_PY" -m hpc.requeue newest-step "$run_dir/checkpoints" || echo none)"
        progress=(--checkpoints "$run_dir/checkpoints" --step-before "$before"
                  --summary "$run_dir/summary.json" --started "$started")
        echo "lus: newest committed checkpoint at start: $before"
    fi
    LUS_USR1_FORWARDED=0 LUS_RESEND_PID=""
    "$@" &
    LUS_STEP_PID=$!
    trap lus_forward_usr1 USR1
    [[ "${LUS_USR1_PENDING:-0}" == 1 ]] && lus_forward_usr1   # it came during lus doctor
    while kill -0 "$LUS_STEP_PID" 2>/dev/null; do
        wait "$LUS_STEP_PID" || true          # returns early when the trap runs
    done
    wait "$LUS_STEP_PID" && rc=0 || rc=$?     # bash keeps the status of a reaped job
    trap - USR1
    if [[ -n "$LUS_RESEND_PID" ]]; then kill "$LUS_RESEND_PID" 2>/dev/null || true; fi
    local usr1=()
    [[ "$LUS_USR1_FORWARDED" == 1 ]] && usr1=(--usr1)
    verdict="$("$LUS_PY" -m hpc.requeue decide --exit-code "$rc" "${usr1[@]}" \
               --marker-dir "$LUS_REQUEUE_MARKER_DIR" --restarts "${SLURM_RESTART_COUNT:-0}" \
               --max-requeues "${LUS_MAX_REQUEUES:-10}" "${progress[@]}")" || verdict=""
    rm -rf "$LUS_REQUEUE_MARKER_DIR"
    rmdir "${LUS_REQUEUE_MARKER_DIR%/*}" 2>/dev/null || true     # .lus-requeue/, if now empty
    case "$verdict" in
        requeue)
            scontrol requeue "$job"
            exit 0 ;;
        "exit "*)
            return "${verdict#exit }" ;;
        *)
            echo "lus: hpc.requeue gave no verdict; step exit code $rc, not requeueing"
            return "$(( rc == 0 ? 1 : rc ))" ;;
    esac
}

# The USR1 trap of lus_step: forward now, and start the resender once.
lus_forward_usr1() {
    echo "lus: USR1 received, forwarding to the trainers"
    LUS_USR1_FORWARDED=1
    kill -USR1 "$LUS_STEP_PID" 2>/dev/null || true
    if [[ -z "$LUS_RESEND_PID" ]]; then
        (while sleep "${LUS_USR1_RESEND_S:-10}" && kill -USR1 "$LUS_STEP_PID" 2>/dev/null; do :; done) &
        LUS_RESEND_PID=$!
    fi
}

# lus_prep_submit TASKS SCRIPT: submit SCRIPT as a TASKS-array (LUS_PREP_STAGE=pack) and a
# finalize job (LUS_PREP_STAGE=finalize) that runs only if every task succeeded; a failed
# task cancels it (--kill-on-invalid-dep=yes) instead of leaving it pending forever.
# Slurm does not create a log folder (a job whose --output folder is missing fails to launch
# and writes nothing), so logs/ is made here; SBATCH_ARGS come last and win.
lus_prep_submit() {
    local tasks="$1" script="$2" extra=() array_id fin_id
    read -r -a extra <<< "${SBATCH_ARGS:-}"
    [[ "$DRY_RUN" == 1 ]] || mkdir -p logs
    local array_cmd=(sbatch --parsable --array="0-$((tasks - 1))" --output="logs/%x-%A_%a.out" "${extra[@]}"
                     --export="ALL,LUS_PREP_STAGE=pack,LUS_ROOT=$LUS_ROOT" "$script" "${LUS_ARGS[@]}")
    local fin_cmd=(sbatch --parsable --kill-on-invalid-dep=yes "${extra[@]}"
                   --export="ALL,LUS_PREP_STAGE=finalize,LUS_ROOT=$LUS_ROOT" "$script")
    if [[ "$DRY_RUN" == 1 ]]; then
        lus_run "${array_cmd[@]}"
        lus_run "${fin_cmd[0]}" "${fin_cmd[1]}" --dependency=afterok:ARRAY_JOB_ID "${fin_cmd[@]:2}"
        return 0
    fi
    array_id="$("${array_cmd[@]}")"
    array_id="${array_id%%;*}"
    fin_id="$("${fin_cmd[0]}" "${fin_cmd[1]}" --dependency="afterok:$array_id" "${fin_cmd[@]:2}")"
    echo "lus: pack array job ${array_id} (${tasks} tasks), finalize job ${fin_id%%;*} (afterok)"
}

# lus_train FAMILY: the whole body of train_<family>.sh.
#   CONFIG (default configs/<family>.yaml), RUN_DIR (default runs/<family>-$SLURM_JOB_ID),
#   DATA (-> data.root=$DATA), remaining arguments are dotted overrides.
lus_train() {
    local family="$1"
    local config="${CONFIG:-configs/$family.yaml}"
    local run_dir="${RUN_DIR:-runs/$family-${SLURM_JOB_ID:-local}}"
    local extra=()
    [[ -n "${DATA:-}" ]] && extra+=("data.root=$DATA")
    LUS_RUN_DIR="$run_dir"
    lus_doctor "$family" --config "$config" "${extra[@]}" "${LUS_ARGS[@]}"
    lus_torchrun_cmd train "$family" --config "$config" --run-dir "$run_dir" --resume auto \
        "${extra[@]}" "${LUS_ARGS[@]}"
    lus_step "${LUS_CMD[@]}"
}

# lus_doctor FAMILY ARGS...: every rank prints the device / process group / precision plan
# it will train with (same srun + torchrun layout, one all-reduce to prove the backend
# connects), so the job log shows it; a broken plan (e.g. more ranks than GPUs) fails the
# job here with the reason instead of in the middle of training. LUS_DOCTOR=0 skips it.
# A USR1 (time limit near) arriving meanwhile is kept and forwarded once training starts.
lus_doctor() {
    [[ "${LUS_DOCTOR:-1}" == 0 ]] && return 0
    lus_torchrun_cmd doctor "$@"
    trap 'echo "lus: USR1 received during lus doctor, kept for the trainers"; LUS_USR1_PENDING=1' USR1
    lus_run "${LUS_CMD[@]}"
    trap - USR1
}
