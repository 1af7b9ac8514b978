"""Cluster helpers around hydra-submitit-launcher: the sbatch script a sweep would submit, and
the distributed environment of a multi-task SLURM job."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from omegaconf import OmegaConf

# hydra-submitit-launcher key -> submitit's sbatch argument (as submitit's AutoExecutor maps them)
_RENAMED = {"timeout_min": "time", "tasks_per_node": "ntasks_per_node", "name": "job_name"}
_DROPPED = {"_target_", "submitit_folder", "max_num_timeout", "mem_gb"}


def sbatch_script(overrides: list[str], num_jobs: int = 1) -> str:
    """The sbatch file submitit writes for a sweep job with these overrides (no cluster needed)."""
    from hydra import compose, initialize_config_dir
    from submitit.slurm.slurm import _make_sbatch_string

    from qexp.config import config_dir

    if not any(o.startswith("hydra/launcher=") for o in overrides):
        overrides = [*overrides, "hydra/launcher=slurm"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher: dict[str, Any] = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    if "slurm" not in str(launcher.get("_target_", "")).lower():
        raise ValueError("sbatch preview needs a SLURM launcher (hydra/launcher=slurm or submitit_slurm)")
    folder = str(launcher.get("submitit_folder", "%j")).replace("${hydra.sweep.dir}", "SWEEP_DIR")
    params = {_RENAMED.get(k, k): v for k, v in launcher.items() if k not in _DROPPED}
    if launcher.get("mem_gb"):
        params["mem"] = f"{launcher['mem_gb']}GB"
    params["job_name"] = "qexp-train"
    if num_jobs > 1:
        params["map_count"] = num_jobs
    else:
        params.pop("array_parallelism", None)
    params = {k: v for k, v in params.items() if v is not None}
    return _make_sbatch_string(command="python -u -m submitit.core._submit " + folder, folder=folder, **params)


def slurm_dist_env() -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from SLURM when a job runs several
    tasks (srun or submitit with tasks_per_node > 1) and torchrun has not set them."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_JOB_NODELIST", "localhost")
        try:
            first = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                   check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            first = nodelist.split(",")[0]
        os.environ["MASTER_ADDR"] = first
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
