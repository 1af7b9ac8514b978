#!/bin/bash
# Plain-sbatch alternative to `hydra/launcher=slurm`: one qexp run on the GPUs of one node (DDP,
# one process per GPU; one process on a CPU-only node). From the repository root:
#   sbatch scripts/sbatch_example.sh model=resnet dataset=cifar10 quant=sq bits=2
# Override any #SBATCH line on the command line (sbatch --gpus-per-node=8 --time=2:00:00 ...);
# PYTHON=/path/to/python sbatch ... picks another interpreter than .venv/bin/python.
# Time limit / preemption: SLURM sends SIGTERM to this script 120 s early (B:TERM@120); qexp
# checkpoints, its status.json says `preempted`, and the script requeues the job, which resumes
# from the checkpoint in the same run dir (trainer.resume=auto).
#SBATCH --job-name=qexp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${PYTHON:-.venv/bin/python}
RUN_DIR="runs/slurm/${SLURM_JOB_NAME}-${SLURM_JOB_ID}"
# torchrun starts one process per GPU; rank 0 writes the record and checkpoints.
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="${SLURM_GPUS_ON_NODE:-1}" \
    -m qexp train "$@" hydra.run.dir="$RUN_DIR" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
wait "$child"
rc=$?
if kill -0 "$child" 2>/dev/null; then  # the trap interrupted the wait: let qexp finish its checkpoint
    wait "$child"
    rc=$?
fi
if grep -q '"status": "preempted"' "$RUN_DIR/status.json" 2>/dev/null; then
    echo "qexp was preempted with a checkpoint in $RUN_DIR: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
