#!/bin/bash
# Plain-sbatch alternative to `hydra/launcher=slurm`: one qexp run on 4 GPUs of one node (DDP).
# Submit with:  sbatch scripts/sbatch_example.sh model=resnet dataset=cifar10 quant=sq bits=2
# Requeue on preemption: SLURM sends SIGTERM, qexp checkpoints and exits 75; the job is
# requeued (--requeue) and `trainer.resume=auto` continues from the checkpoint in the same dir.
#SBATCH --job-name=qexp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=runs/slurm/%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
RUN_DIR="runs/slurm/${SLURM_JOB_NAME}-${SLURM_JOB_ID}"
# torchrun starts one process per GPU; rank 0 writes the record and checkpoints.
exec .venv/bin/torchrun --standalone --nproc_per_node="${SLURM_GPUS_ON_NODE:-4}" \
    -m qexp train "$@" hydra.run.dir="$RUN_DIR"
