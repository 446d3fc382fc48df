"""Whole-config validation: everything a run's config must get right, checked before Hydra
creates a run directory and before torch, transformers or trl are imported.

:func:`validate` checks a composed config against what the method, the data, the model folder,
the constitution and the machine need; it answers a mistake with one AlignlabError that says
how to fix it. Recipes validate every stage with it before the first one runs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignlab import checks, constitution
from alignlab.config import (
    LORA_DEFAULTS,
    builtin_models,
    check_args,
    cuda_present,
    dataclass_fields,
    normalize_lora,
)
from alignlab.data import formats, source
from alignlab.errors import AlignlabError, did_you_mean
from alignlab.methods import method_info


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or os.sep in path.strip("/").split("/", 2)[-1] \
        or Path(path).suffix in {".json", ".jsonl", ".parquet", ".csv"}


def validate(cfg: Any, pending: Collection[str] = ()) -> None:
    """Check a composed config (OmegaConf or plain dict) and raise AlignlabError on a mistake.

    ``pending``: paths that a recipe's earlier stages will create (not checked on disk yet).
    """
    c = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    info = method_info(c["method"]["name"])
    args = dict(c["method"].get("args") or {})
    check_args(args, info.args_class, "method.args")
    checks.check_api_key_env(args, "method.args")
    checks.check_values(args, info.name, "method.args")
    # The presets' suggestions reach the trainer too (those its config has: merged_args).
    fields = dataclass_fields(info.args_class)
    by_model = c["model"].get("train_args") or {}
    for where, extra in (("model.train_args.default", by_model.get("default")),
                         (f"model.train_args.{info.name}", by_model.get(info.name)),
                         ("hardware.args", c["hardware"].get("args"))):
        if isinstance(extra, dict):
            checks.check_values({k: v for k, v in extra.items() if k in fields}, info.name, where)

    lora = c["model"].get("lora")
    normalized = normalize_lora(lora)
    lora_fields = set(dataclass_fields("peft.tuners.lora.config:LoraConfig")) | set(LORA_DEFAULTS)
    for key in normalized:
        if key not in lora_fields:
            raise AlignlabError(f"'model.lora.{key}' is not a LoRA setting."
                                f"{did_you_mean(key, lora_fields)}")
    checks.check_lora(normalized)

    path = c["model"]["path"]
    if not path.startswith("builtin:") and _looks_local(path) and path not in pending \
            and not Path(path).expanduser().exists():
        raise AlignlabError(f"Model path '{path}' does not exist. Set model.path to a folder "
                            "with config.json and weights, or pick a preset with model=...")
    if path.startswith("builtin:") and path.split(":", 1)[1] not in builtin_models():
        name = path.split(":", 1)[1]
        raise AlignlabError(f"There is no built-in model '{name}'."
                            f"{did_you_mean(name, builtin_models())}")
    pickle = bool(c["model"].get("allow_pickle"))
    for key in ("reference", "reward_model"):
        value = c["method"].get(key)
        if value and _looks_local(value) and value not in pending \
                and not Path(value).expanduser().exists():
            raise AlignlabError(f"method.{key}='{value}' does not exist. Point it at a model "
                                "folder, e.g. the `model/` folder of an earlier run.")
        checks.check_model_folder(value, f"method.{key}", allow_pickle=pickle, pending=pending)
    # A local folder is checked here, before torch loads: a folder without config.json
    # otherwise fails inside transformers, with a message about the tokenizer and the Hub.
    checks.check_model_folder(path, "model.path", allow_pickle=pickle, tokenizer=True,
                              pending=pending)
    if info.needs_reward_model and not c["method"].get("reward_model") \
            and not c["method"].get("reward_funcs"):
        raise AlignlabError(f"method={info.name} needs a reward. Set method.reward_model="
                            "<reward run>/model or method.reward_funcs=[toy_judge].")

    _validate_hardware(c)
    data = c["data"]
    known = formats()
    if data["format"] not in known:
        raise AlignlabError(f"data.format='{data['format']}' is unknown."
                            f"{did_you_mean(data['format'], known)}")
    src = source(data)  # the toy world's generator, or the presets over files and hub data
    if src.needs_path and not data.get("path"):
        raise AlignlabError(f"data={data['name']} needs data.path (a hub dataset id or a local "
                            ".json/.jsonl/.parquet file or folder).")
    checks.check_data_values(data)
    if src.check is not None:  # e.g. the toy world's skills, or the files data.path names
        src.check(data, pending)
    if info.name in ("cai", "judge"):  # the stages that read a constitution: check it now
        constitution.load(c.get("constitution"), need_choice=info.name == "judge")


def _shards_weights(accelerate_config: str | None) -> bool:
    """Whether an accelerate config (a preset name or a YAML path) shards the weights
    (FSDP or DeepSpeed ZeRO)."""
    if accelerate_config in ("fsdp", "zero2", "zero3"):
        return True
    path = Path(str(accelerate_config or "")).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        kind = str(OmegaConf.load(path).get("distributed_type", "")).upper()
        return kind in ("FSDP", "DEEPSPEED")
    return False


def _validate_hardware(c: dict[str, Any]) -> None:
    hw = c["hardware"]
    quant = c["model"].get("quantization") or hw.get("model", {}).get("quantization")
    if c["method"]["name"] == "ppo" and _shards_weights(hw.get("accelerate_config")):
        # Checked first: it is wrong on any machine. Sampling from sharded weights needs every
        # rank in each generate step (synced_gpus), or ranks that finish early deadlock; and the
        # loop steps a plain optimizer, not a DeepSpeed engine.
        raise AlignlabError(f"method=ppo does not support hardware={hw['name']}: alignlab's PPO "
                            "runs under DDP only, its rollouts cannot generate from FSDP/ZeRO "
                            "weights. Use hardware=multi-gpu (DDP), with model.lora=true if the "
                            "model does not fit one GPU.")
    if hw["device"] == "cuda" and not cuda_present():
        fix = " (or hardware.device=cpu to try QLoRA, slowly, on the CPU)" if quant else ""
        raise AlignlabError(f"hardware={hw['name']} needs an NVIDIA GPU with CUDA, and this "
                            f"machine has none. Use hardware=cpu (the default){fix}.")
    if quant not in (None, "4bit", "8bit"):
        raise AlignlabError(f"model.quantization={quant!r} is not supported. Use 4bit, 8bit "
                            "or null.")
    sharded = hw.get("accelerate_config") in ("fsdp", "zero3")
    if quant and sharded:
        raise AlignlabError(f"Quantized (QLoRA) training with hardware={hw['name']} is not "
                            "supported: 4-bit weights cannot be sharded reliably. Use "
                            "hardware=qlora on one GPU, or hardware=multi-gpu (DDP) with QLoRA.")
    if str(hw.get("accelerate_config", "")).startswith("zero") \
            and importlib.util.find_spec("deepspeed") is None:
        raise AlignlabError(f"hardware={hw['name']} needs DeepSpeed. Install it with "
                            "`.venv/bin/pip install deepspeed`, or use hardware=fsdp.")
    if hw["num_machines"] > 1 and not hw.get("main_process_ip"):
        raise AlignlabError("hardware.num_machines > 1 needs hardware.main_process_ip (the "
                            "address of machine rank 0) on every machine.")
