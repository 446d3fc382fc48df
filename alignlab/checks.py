"""Up-front checks of values, paths and secrets, run with the config validation.

Everything here is cheap and imports nothing heavy (no torch, transformers, trl or datasets):
a mistake found here costs the user well under a second, where the same mistake found by TRL or
torch costs the seconds to import them, or minutes of training.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, did_you_mean

# ---------------------------------------------------------------------------------------------
# Value ranges of trainer arguments, by field name. Only ranges whose meaning is unambiguous are
# checked; anything else is left to the dataclass (its __post_init__) and the trainer.

Rule = tuple[Callable[[float], bool], str]

_POSITIVE: Rule = (lambda v: v > 0, "a number > 0")
_AT_LEAST_1: Rule = (lambda v: v >= 1 and v == int(v), "a whole number >= 1")
_NON_NEGATIVE: Rule = (lambda v: v >= 0, "a number >= 0")
_FRACTION: Rule = (lambda v: 0 <= v <= 1, "a number between 0 and 1")
_OPEN_FRACTION: Rule = (lambda v: 0 < v <= 1, "a number > 0 and <= 1")

_RANGES: dict[str, Rule] = {
    "learning_rate": _POSITIVE,
    "num_train_epochs": _POSITIVE,
    "max_steps": (lambda v: v == -1 or (v >= 1 and v == int(v)),
                  "-1 (train for num_train_epochs) or a whole number >= 1"),
    "weight_decay": _NON_NEGATIVE,
    "max_grad_norm": _NON_NEGATIVE,
    "warmup_steps": _NON_NEGATIVE,
    "warmup_ratio": _FRACTION,
    "adam_beta1": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
    "adam_beta2": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
    "adam_epsilon": _POSITIVE,
    "dataloader_num_workers": _NON_NEGATIVE,
    "label_smoothing": (lambda v: 0 <= v <= 0.5, "a number between 0 and 0.5"),
    "label_smoothing_factor": _FRACTION,
    "top_p": _OPEN_FRACTION,
    "min_p": _FRACTION,
    "top_k": _NON_NEGATIVE,
    "repetition_penalty": _POSITIVE,
    "epsilon": _POSITIVE,
    "beta": _NON_NEGATIVE,
    "kl_coef": _NON_NEGATIVE,
    "vf_coef": _NON_NEGATIVE,
    "cliprange": _POSITIVE,
    "cliprange_value": _POSITIVE,
    "gamma": _FRACTION,
    "lam": _FRACTION,
    "temperature": _NON_NEGATIVE,
    "num_generations": (lambda v: v >= 2 and v == int(v),
                        "a whole number >= 2 (the group's rewards are compared)"),
}
for _name in ("per_device_train_batch_size", "per_device_eval_batch_size",
              "gradient_accumulation_steps", "logging_steps", "save_steps", "eval_steps",
              "max_length", "max_prompt_length", "max_completion_length", "max_new_tokens",
              "response_length", "generation_batch_size", "steps_per_generation",
              "num_iterations", "num_mini_batches", "num_ppo_epochs", "total_episodes",
              "local_rollout_forward_batch_size", "batch_size"):
    _RANGES[_name] = _AT_LEAST_1

# Where a method gives a field a stricter meaning than the generic rule: on its registry row
# (alignlab.methods.spec.Method.arg_rules).
# beta scales the implicit reward; at 0 the DPO/KTO loss has no gradient (IPO divides by it).
POSITIVE_BETA: Rule = (lambda v: v > 0, "a number > 0 (0.1 is TRL's default)")
# RL samples from softmax(logits / T): T = 0 divides by zero (greedy needs no RL).
SAMPLING_TEMPERATURE: Rule = (lambda v: v > 0, "a number > 0 (1.0 samples the model as is)")


def check_values(args: Mapping[str, Any], method: str, where: str,
                 rules: Mapping[str, Rule] | None = None) -> None:
    """Refuse trainer arguments outside their meaningful range (``method.args.max_steps=-2``);
    ``rules``: the method's own, stricter ones (its registry row's ``arg_rules``)."""
    for key, value in args.items():
        rule = (rules or {}).get(key) or _RANGES.get(key)
        if rule is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        ok, expected = rule
        if not ok(value):
            raise AlignlabError(f"{where}.{key}={value!r} is out of range for method={method}: "
                                f"it must be {expected}. Fix the value in the override or YAML.")


def check_lora(lora: Mapping[str, Any]) -> None:
    """LoRA's rank, alpha and dropout make sense (``model.lora.r=0`` is no adapter at all)."""
    checks = {"r": _AT_LEAST_1, "alpha": _POSITIVE, "dropout": (lambda v: 0 <= v < 1,
                                                                "a number >= 0 and < 1")}
    for key, (ok, expected) in checks.items():
        value = lora.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise AlignlabError(f"model.lora.{key}={value!r} is not valid: it must be {expected} "
                                "(e.g. model.lora.r=8 model.lora.alpha=16).")


def check_data_values(data: Mapping[str, Any]) -> None:
    """``data.max_samples`` and the toy world's sizes and rates are in range."""
    cap = data.get("max_samples")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise AlignlabError(f"data.max_samples={cap!r} would keep no rows. Set it to a "
                            "positive number of rows, or null (the default) for all rows.")
    dropped = data.get("max_dropped")
    if isinstance(dropped, bool) or not isinstance(dropped, (int, float)) or not 0 <= dropped <= 1:
        raise AlignlabError(f"data.max_dropped={dropped!r} is a share of the training rows: set "
                            "it between 0 (refuse any dropped row) and 1 (allow all).")
    columns = data.get("columns") or {}
    bad = [f"{k}: {v!r}" for k, v in columns.items() if not isinstance(v, str) or not v]
    if bad or len(set(columns.values())) < len(columns):
        given = ", ".join(f"{k}: {v}" for k, v in columns.items())
        raise AlignlabError(f"data.columns={{{given}}} must map each name alignlab reads to a "
                            "different column of your file, e.g. data.columns='{chosen: "
                            "text_correct, rejected: text_incorrect}'.")
    toy = data.get("toy") or {}
    for key in ("n_sft", "n_pairs", "n_prompts", "n_skills"):
        value = toy.get(key)
        # n_sft=0 with skill rows: an SFT on the skills alone (a CAI recipe's skills stage)
        low = 0 if key == "n_skills" or (key == "n_sft" and toy.get("n_skills")) else 1
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            raise AlignlabError(f"data.toy.{key}={value} must be a whole number >= {low}.")
    for key in ("error_rate", "comply_rate", "refuse_rate"):
        value = toy.get(key)
        if isinstance(value, (int, float)) and not 0 <= value <= 1:
            raise AlignlabError(f"data.toy.{key}={value} is a share: it must be between 0 and 1.")
    fraction = toy.get("test_fraction")
    if isinstance(fraction, (int, float)) and not 0 < fraction < 1:
        raise AlignlabError(f"data.toy.test_fraction={fraction} must be between 0 and 1 "
                            "(exclusive): both the train and the held-out prompts need rows.")


# ---------------------------------------------------------------------------------------------
# Secrets: keys come from the environment; the config only names the variable.

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_api_key_env(args: Mapping[str, Any], where: str) -> None:
    """``api_key_env`` names the variable that holds the key; a value that cannot be a variable
    name is most likely the key itself (credential-looking values are refused by
    :func:`alignlab.runs.refuse_secrets` before this runs)."""
    env = args.get("api_key_env")
    if isinstance(env, str) and env and not _ENV_NAME.match(env):
        # Never echo the value: it may be the key.
        raise AlignlabError(f"{where}.api_key_env must be the name of an environment variable "
                            "(e.g. OPENAI_API_KEY), not the key itself. Export the key under "
                            "that name and pass only the name.")


# ---------------------------------------------------------------------------------------------
# Model folders

_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _has(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(p), None) is not None for p in patterns)


def check_model_folder(path: str | None, key: str, *, allow_pickle: bool,
                       tokenizer: bool = False, pending: Collection[str] = ()) -> None:
    """A local model path is a folder transformers can load: config.json (or, for a LoRA
    adapter, adapter_config.json), safetensors weights and, where ``tokenizer``, a tokenizer.

    Hub ids and paths that do not exist here are left to the caller; ``pending`` are outputs of
    recipe stages that have not run yet.
    """
    if not path or str(path).startswith("builtin:") or str(path) in pending:
        return
    p = Path(str(path)).expanduser()
    if not p.exists():
        return
    if p.is_file():
        if p.suffix == ".gguf":
            return
        raise AlignlabError(f"{key}='{path}' is a file, but a model is a folder (config.json, "
                            "weights and tokenizer, as save_pretrained writes it). Set "
                            f"{key} to the folder, e.g. '{p.parent}' or the `model/` folder "
                            "of a run.")
    if (p / "adapter_config.json").exists() or _has(p, ("*.gguf",)):
        return
    if not (p / "config.json").exists():
        inner = p / "model"
        if (inner / "config.json").exists() or (inner / "adapter_config.json").exists():
            raise AlignlabError(f"{key}='{path}' is a run directory, not a model folder. "
                                f"Did you mean '{inner}'?")
        found = sorted(c.name for c in p.iterdir())[:5]
        raise AlignlabError(f"{key}='{path}' has no config.json, so it is not a model folder "
                            f"(it holds: {', '.join(found) or 'nothing'}). Point {key} at a "
                            "folder written by save_pretrained (config.json + weights + "
                            "tokenizer), e.g. the `model/` folder of a run.")
    if not _has(p, _WEIGHTS):
        if _has(p, _PICKLES):
            if not allow_pickle:
                raise AlignlabError(f"'{path}' has no safetensors weights, only pickle files, "
                                    "which can run code when loaded. Convert them, or set "
                                    "model.allow_pickle=true if you trust the source.")
        else:
            raise AlignlabError(f"{key}='{path}' has config.json but no weights (*.safetensors)."
                                " Copy the weights into the folder, or point at a complete one.")
    if tokenizer and not any((p / name).exists() for name in _TOKENIZER):
        raise AlignlabError(f"{key}='{path}' has no tokenizer (tokenizer.json or "
                            "tokenizer_config.json). Save the tokenizer into the folder with "
                            "tokenizer.save_pretrained(folder).")


# ---------------------------------------------------------------------------------------------
# Run directories


def check_run_dir(path: str, key: str = "hydra.run.dir") -> None:
    """The run directory can be created (or, when it exists, written to), tried for real.

    Permission bits alone would not do: root may create nothing under /proc whatever they say.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise AlignlabError(f"{key}='{path}' is an existing file. Set {key} to a folder path "
                            "(new, or an earlier run to resume).")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise AlignlabError(f"{key}='{path}' is under '{probe}', which is a file, not a folder. "
                            f"Set {key} to a path under a folder.")
    try:
        if probe == p:
            fd, tmp = tempfile.mkstemp(dir=p, prefix=".alignlab-write-test-")
            os.close(fd)
            os.unlink(tmp)
        else:
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".alignlab-write-test-"))
    except OSError as err:
        raise AlignlabError(f"{key}='{path}' cannot be created: '{probe}' is not writable "
                            f"({err.strerror or err}). Set {key} to a folder you can write, "
                            "e.g. under runs/.") from None


def choices_hint(name: str, options: Collection[str]) -> str:
    """``did_you_mean`` that says so when there is nothing to choose from."""
    return did_you_mean(name, options) if options else " There are none."
