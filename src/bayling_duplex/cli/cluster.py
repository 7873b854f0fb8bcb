"""Distributed environment for jobs that no torch launcher started (Slurm via submitit).

torchrun, accelerate and the deepspeed launcher export ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` themselves. A job submitted
by hydra-submitit-launcher runs one process per Slurm task with none of them
set: this fills them in from Slurm's variables, the way submitit documents.
"""

from __future__ import annotations

import os


def export_submitit_env() -> bool:
    """Export torch.distributed variables inside a submitit Slurm task; True if it did."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return False
    from submitit.helpers import TorchDistributedEnvironment

    # CUDA_VISIBLE_DEVICES stays as Slurm set it (LOCAL_RANK picks the device); a
    # MASTER_PORT/ADDR passed on from the submitting shell is taken as chosen
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return True
