"""Hardware presets: multi-process launches (real DDP over gloo on 2 CPU processes), QLoRA on
the CPU, multi-node launch commands, and the combinations we refuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import alignlab


def test_launch_command_for_multi_node() -> None:
    from alignlab import cli, launch

    cfg = cli.compose(["hardware=multi-gpu", "hardware.num_processes=8",
                       "hardware.num_machines=2", "hardware.machine_rank=1",
                       "hardware.main_process_ip=10.1.2.3", "hardware.device=cpu"])
    cmd = launch.launch_command(cfg.hardware, ["method=dpo"])
    joined = " ".join(cmd)
    assert "accelerate.commands.launch" in joined and "ddp.yaml" in joined
    for part in ("--num_processes 16", "--num_machines 2", "--machine_rank 1",
                 "--main_process_ip 10.1.2.3", "--main_process_port 29500",
                 "-m alignlab method=dpo"):
        assert part in joined, part


@pytest.mark.parametrize(("args", "expect"), [
    (["hardware=qlora"], "hardware.device=cpu"),
    (["hardware=fsdp", "hardware.device=cpu", "model.quantization=4bit"], "not supported"),
    (["hardware=zero3", "hardware.device=cpu"], "deepspeed"),
    (["hardware=multi-gpu", "hardware.device=cpu", "hardware.num_machines=2"], "main_process_ip"),
])
def test_refused_combinations(args: list[str], expect: str) -> None:
    proc = alignlab(*args, check=False)
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr


def _ranks(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank-*.json"))]


@pytest.mark.xdist_group("ddp")  # one DDP launch at a time: they share the default port
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_cpu_processes_train_one_model(method: str, sft_run: Path, tmp_path: Path) -> None:
    """hardware=cpu-ddp relaunches itself under accelerate: 2 ranks, DDP over gloo."""
    out = tmp_path / method
    extra = ["data.toy.n_sft=256", "method.args.max_steps=6"] if method == "sft" else \
        [f"model.path={sft_run}/model", "method.args.max_steps=6"]
    proc = alignlab(f"hydra.run.dir={out}", f"method={method}", "hardware=cpu-ddp",
                    "method.args.save_strategy=no", *extra,
                    env={"ALIGNLAB_RANK_CHECK": "1", "OMP_NUM_THREADS": "1"})
    assert "launching 2 processes" in proc.stdout
    ranks = _ranks(out)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert not list(tmp_path.glob("*/*/ranks")), "all ranks shared one run directory"


def test_qlora_on_cpu_saves_an_adapter(sft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "qlora"
    alignlab(f"hydra.run.dir={out}", "hardware=qlora", "hardware.device=cpu",
             "hardware.args.gradient_checkpointing=false", f"model.path={sft_run}/model",
             "method.args.max_steps=4", "method.args.save_strategy=no", "data.toy.n_sft=128",
             env={"OMP_NUM_THREADS": "1"})
    adapter = out / "model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert not (adapter / "model.safetensors").exists(), "only the adapter is saved"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sft_run / "model")
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert os.path.exists(adapter / "adapter_model.safetensors")


def test_slurm_launcher_preset_composes() -> None:
    proc = alignlab("hydra/launcher=alignlab_slurm", "hydra.launcher.partition=gpu",
                    "recipe=dpo", "--cfg", "hydra")
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    assert "gpus_per_node: 8" in proc.stdout


def test_omp_wait_policy_is_passive_unless_the_user_says_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle OpenMP threads sleep instead of spinning (a DPO run beside one other CPU-bound
    process took 52 s spinning, 33 s passive); the user's own OMP_WAIT_POLICY wins, and
    hardware.omp_wait_policy=null leaves OpenMP's default."""
    from alignlab import cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli.apply_threading(cli.compose([]).hardware)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli.apply_threading(cli.compose([]).hardware)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    cli.apply_threading(cli.compose(["hardware.omp_wait_policy=null"]).hardware)
    assert "OMP_WAIT_POLICY" not in os.environ


def test_passive_threads_spin_briefly_before_they_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the passive policy an idle thread spins briefly (GOMP_SPINCOUNT=1000) before it
    sleeps: sleeping at once made PPO on llama-small 1.8x slower on an idle machine. Other
    policies keep their own spin; the user's GOMP_SPINCOUNT wins; omp_spin_count=null sets
    nothing."""
    from alignlab import cli

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    cli.apply_threading(cli.compose([]).hardware)
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    cli.apply_threading(cli.compose(["hardware.omp_spin_count=50"]).hardware)
    assert os.environ["GOMP_SPINCOUNT"] == "7"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the user's own passive: no spin added
    cli.apply_threading(cli.compose([]).hardware)
    assert "GOMP_SPINCOUNT" not in os.environ
    for overrides in (["hardware.omp_spin_count=null"], ["hardware.omp_wait_policy=active"]):
        for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            monkeypatch.delenv(var, raising=False)
        cli.apply_threading(cli.compose(overrides).hardware)
        assert "GOMP_SPINCOUNT" not in os.environ, overrides


def test_bad_omp_wait_policy_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import alignlab, one_error_line

    proc = alignlab("hardware.omp_wait_policy=sleepy", f"hydra.run.dir={tmp_path / 'r'}",
                    check=False)
    assert "hardware.omp_wait_policy='sleepy' is unknown" in one_error_line(proc)
    proc = alignlab("hardware.omp_spin_count=-1", f"hydra.run.dir={tmp_path / 'r'}",
                    check=False)
    assert "hardware.omp_spin_count=-1 is not a count of spins" in one_error_line(proc)
