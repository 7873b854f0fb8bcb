"""Cluster launch wiring: the sbatch script (dry run and a real two-node launch on this machine),
the Slurm environment that submitit tasks export, and the Hydra submitit launcher preset."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bayling_duplex.cli import schemas
from bayling_duplex.cli.hydra import config_dir, repo_root

ROOT = repo_root()
SBATCH = ROOT / "scripts" / "slurm_sft.sbatch"
TESTS = Path(__file__).resolve().parents[1]  # launch_probe.py lives in tests/


def slurm_env(**extra: str) -> dict[str, str]:
    """This environment without any Slurm/torch distributed variables, plus ``extra``."""
    drop = ("SLURM_", "SUBMITIT_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "LOCAL_WORLD")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("BAYLING_DUPLEX_ROOT", None)
    return env | extra


def sbatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, timeout=120
    )


def printed(out: str, prefix: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith(prefix))
    return shlex.split(line[len(prefix) :])


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.mark.parametrize(
    ("nodelist", "master"),
    [
        ("gpu[07-08]", "gpu07"),
        ("gpu[11,14-15]", "gpu11"),
        ("gpu-a3,gpu-b4", "gpu-a3"),
        ("node17", "node17"),
        ("x[9],y[1-2]", "x9"),
    ],
)
def test_sbatch_dry_run_prints_the_launch_of_this_node(nodelist: str, master: str) -> None:
    env = slurm_env(
        SLURM_JOB_ID="4242",
        SLURM_NNODES="2",
        SLURM_NODEID="1",
        SLURM_JOB_NODELIST=nodelist,
        SLURM_SUBMIT_DIR=str(ROOT),
        DRY_RUN="1",
        PATH="/usr/bin:/bin:" + str(Path(sys.executable).parent),  # no scontrol
    )
    res = sbatch(env, "experiment=paper_sft", "optim.lr=2e-5")
    assert res.returncode == 0, res.stderr
    srun = printed(res.stdout, "srun: ")
    assert srun == [
        *("srun", "--nodes", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=1"),
        *("env", "_BAYLING_SLURM_NODE=1", "bash", str(SBATCH)),
        *("experiment=paper_sft", "optim.lr=2e-5"),
    ]
    cmd = printed(res.stdout, "node 1: ")
    assert cmd[:2] == ["accelerate", "launch"]
    assert flag(cmd, "--config_file") == "configs/accelerate/deepspeed_multinode.yaml"
    assert flag(cmd, "--machine_rank") == "1"  # from SLURM_NODEID
    assert flag(cmd, "--num_machines") == "2"
    assert flag(cmd, "--num_processes") == "16"  # 2 nodes x 8 GPUs
    assert flag(cmd, "--main_process_ip") == master  # the first host of the job
    assert flag(cmd, "--main_process_port") == "29500"
    assert cmd[cmd.index("-m") :] == [
        "-m",
        "bayling_duplex.train",
        "sft",
        "experiment=paper_sft",
        "optim.lr=2e-5",
    ]


def test_sbatch_prefers_scontrol_and_honours_the_knobs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "hostA\\nhostB\\n"\n')
    scontrol.chmod(0o755)
    env = slurm_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="1",
        SLURM_JOB_NUM_NODES="4",
        SLURM_NODEID="3",
        SLURM_JOB_NODELIST="weird-list",
        DRY_RUN="1",
        STAGE="dpo",
        GPUS_PER_NODE="4",
        MASTER_PORT="31000",
        ACCELERATE_CONFIG="configs/accelerate/deepspeed_1node.yaml",
    )
    res = sbatch(env)
    assert res.returncode == 0, res.stderr
    cmd = printed(res.stdout, "node 3: ")
    assert flag(cmd, "--main_process_ip") == "hostA"
    assert flag(cmd, "--num_machines") == "4" and flag(cmd, "--num_processes") == "16"
    assert flag(cmd, "--main_process_port") == "31000"
    assert flag(cmd, "--config_file") == "configs/accelerate/deepspeed_1node.yaml"
    assert cmd[-2:] == ["bayling_duplex.train", "dpo"]


def test_sbatch_outside_slurm_is_one_node() -> None:
    res = sbatch(slurm_env(DRY_RUN="1"), "model=tiny")
    assert res.returncode == 0, res.stderr
    assert "srun" not in res.stdout
    cmd = printed(res.stdout, "node 0: ")
    assert flag(cmd, "--num_machines") == "1" and flag(cmd, "--machine_rank") == "0"
    hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert flag(cmd, "--main_process_ip") == hostname


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI missing")
def test_sbatch_two_nodes_on_this_machine_form_one_process_group(tmp_path: Path) -> None:
    """Two 'nodes' (SLURM_NODEID 0 and 1) run the script's node step for real on localhost:
    accelerate turns them into ranks 0 and 1 of one gloo group around the first host."""
    procs = []
    for node in (0, 1):
        env = slurm_env(
            SLURM_JOB_ID="77",
            SLURM_NNODES="2",
            SLURM_NODEID=str(node),
            SLURM_JOB_NODELIST="127.0.0.1",
            SLURM_SUBMIT_DIR=str(ROOT),
            _BAYLING_SLURM_NODE="1",  # what srun sets on each node
            GPUS_PER_NODE="1",
            MASTER_PORT="29563",
            ACCELERATE_CONFIG="configs/accelerate/cpu_2proc.yaml",
            LAUNCH_MODULE="launch_probe",
            PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            PROBE_OUT=str(tmp_path),
        )
        procs.append(
            subprocess.Popen(
                ["bash", str(SBATCH), "data.path=x"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-3000:] for x in logs)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["RANK"] for s in seen] == ["0", "1"]
    assert [s["GROUP_RANK"] for s in seen] == ["0", "1"]  # machine_rank = SLURM_NODEID
    assert all(s["WORLD_SIZE"] == "2" and s["rank_sum"] == 1.0 for s in seen)
    assert all(s["MASTER_ADDR"] == "127.0.0.1" and s["MASTER_PORT"] == "29563" for s in seen)
    assert all(s["argv"] == ["sft", "data.path=x"] for s in seen)


# --------------------------------------------------------------------------- submitit


EXPORT = (
    "import json, os; from bayling_duplex.cli.cluster import export_submitit_env as f; "
    "done = f(); print(json.dumps({'done': done, **{k: os.environ.get(k) for k in "
    "('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', "
    "'CUDA_VISIBLE_DEVICES')}}))"
)
TASK_9_OF_16 = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "31337",
    "SLURM_NTASKS": "16",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "h100-[017-018]",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
}


def exported(**env: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", EXPORT],
        env=slurm_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_submitit_task_exports_the_torch_environment() -> None:
    got = exported(**TASK_9_OF_16)
    assert got["done"] is True
    assert (got["RANK"], got["WORLD_SIZE"], got["LOCAL_RANK"]) == ("9", "16", "1")
    assert got["LOCAL_WORLD_SIZE"] == "8"
    assert got["MASTER_ADDR"] == "h100-017"  # first host of the job
    assert 20000 <= int(got["MASTER_PORT"]) <= 60000  # derived from the job id: same on all tasks
    assert got["MASTER_PORT"] == exported(**TASK_9_OF_16 | {"SLURM_PROCID": "0"})["MASTER_PORT"]
    assert got["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # LOCAL_RANK picks the GPU


def test_a_chosen_master_port_is_kept() -> None:
    got = exported(**TASK_9_OF_16, MASTER_PORT="29999")
    assert got["done"] is True and got["MASTER_PORT"] == "29999" and got["RANK"] == "9"


def test_export_leaves_launcher_environments_alone() -> None:
    by_torchrun = exported(**TASK_9_OF_16, RANK="3", WORLD_SIZE="4")
    assert by_torchrun["done"] is False and by_torchrun["RANK"] == "3"
    not_slurm = exported(**TASK_9_OF_16 | {"SUBMITIT_EXECUTOR": "local"})
    assert not_slurm["done"] is False and not_slurm["RANK"] is None


def test_slurm_launcher_preset_composes_for_the_paper_run() -> None:
    schemas.register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "sft",
            overrides=["hydra/launcher=slurm_h100", "experiment=paper_sft"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    from hydra.utils import get_class

    assert get_class(launcher._target_).__name__ == "SlurmLauncher"


def test_sbatch_refuses_a_submit_dir_that_is_not_the_clone(tmp_path: Path) -> None:
    env = slurm_env(SLURM_JOB_ID="1", SLURM_SUBMIT_DIR=str(tmp_path), DRY_RUN="1")
    res = sbatch(env)
    assert res.returncode == 2 and "not the bayling_duplex clone" in res.stderr
