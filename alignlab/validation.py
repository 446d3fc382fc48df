"""Whole-config validation: everything a run's config must get right, checked before Hydra
creates a run directory and before torch, transformers or trl are imported.

:func:`validate` checks a composed config against what the method, the data, the model folder,
the constitution and the machine need; it answers a mistake with one AlignlabError that says
how to fix it. Recipes validate every stage with it before the first one runs.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from alignlab import checks, config, constitution, methods, runs, watch
from alignlab.config import (
    LORA_DEFAULTS,
    REQUIRED_GROUPS,
    UNSET,
    builtin_models,
    check_args,
    cuda_present,
    dataclass_fields,
    normalize_lora,
    unknown_key,
    wrong_shape,
)
from alignlab.data import formats, source
from alignlab.errors import AlignlabError, did_you_mean


def validate(cfg: Any, pending: Collection[str] = ()) -> None:
    """Check a composed config (OmegaConf or plain dict) and raise AlignlabError on a mistake.

    ``pending``: paths that a recipe's earlier stages will create (not checked on disk yet).
    A message never shows a credential-looking value (messages quote values, and a value may
    come from the environment).
    """
    try:
        _validate(cfg, pending)
    except AlignlabError as err:
        text = runs.redact(str(err))
        if text != str(err):
            raise AlignlabError(text) from None
        raise


def _validate(cfg: Any, pending: Collection[str]) -> None:
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    check_structure(raw)
    check_env_credentials(raw)
    # Everything below sees the values the run will get: interpolations resolved (a value
    # that does not resolve, or to the wrong type, is refused here, naming its key).
    c = resolve(cfg, raw) if isinstance(cfg, DictConfig) else raw
    runs.refuse_secrets(c)  # e.g. ${oc.env:...} of a variable holding a token
    check_shapes(c)
    check_partial_groups(c)
    check_finite(c)
    check_recipe_names(c)
    info = methods.load(c["method"]["name"])
    check_reference(c, info)
    args = dict(c["method"].get("args") or {})
    check_args(args, info.args_class, "method.args")
    checks.check_api_key_env(args, "method.args")
    checks.check_values(args, info.name, "method.args", info.arg_rules)
    if info.check_args is not None:  # a method's own checks of its arguments (e.g. export's)
        info.check_args(args)
    # The presets' suggestions reach the trainer too (those its config has: merged_args).
    fields = dataclass_fields(info.args_class)
    by_model = c["model"].get("train_args") or {}
    for where, extra in (("model.train_args.default", by_model.get("default")),
                         (f"model.train_args.{info.name}", by_model.get(info.name)),
                         ("hardware.args", c["hardware"].get("args"))):
        if isinstance(extra, dict):
            checks.check_values({k: v for k, v in extra.items() if k in fields}, info.name, where,
                                info.arg_rules)

    lora = c["model"].get("lora")
    normalized = normalize_lora(lora)
    lora_fields = set(dataclass_fields("peft.tuners.lora.config:LoraConfig")) | set(LORA_DEFAULTS)
    for key in normalized:
        if key not in lora_fields:
            raise AlignlabError(f"'model.lora.{key}' is not a LoRA setting."
                                f"{did_you_mean(key, lora_fields)}")
    checks.check_lora(normalized)

    path = c["model"]["path"]
    if not path.startswith("builtin:") and runs.looks_local(path) and path not in pending \
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
        if value and runs.looks_local(value) and value not in pending \
                and not Path(value).expanduser().exists():
            raise AlignlabError(f"method.{key}='{value}' does not exist. Point it at a model "
                                "folder, e.g. the `model/` folder of an earlier run.")
        checks.check_model_folder(value, f"method.{key}", allow_pickle=pickle, pending=pending)
    # A local folder is checked here, before torch loads: a folder without config.json
    # otherwise fails inside transformers, with a message about the tokenizer and the Hub.
    checks.check_model_folder(path, "model.path", allow_pickle=pickle, tokenizer=True,
                              pending=pending)
    if info.needs_reward and not c["method"].get("reward_model") \
            and not c["method"].get("reward_funcs"):
        raise AlignlabError(f"method={info.name} needs a reward. Set method.reward_model="
                            "<reward run>/model or method.reward_funcs=[toy_judge].")

    _validate_hardware(c, info)
    watch.check(c)
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
        try:
            src.check(data, pending)
        except RecursionError:  # json.loads of a file nested thousands of levels deep
            raise AlignlabError(f"The data in '{data.get('path')}' is nested too deeply to "
                                "parse (thousands of levels of [ or {). Fix or re-export the "
                                "file: a row is an object of strings and lists of "
                                "messages.") from None
    if info.reads_constitution:  # check it now, not when the stage starts
        constitution.load(c.get("constitution"), need_choice=info.needs_choice)
    unset = next(_unset_values(c), None)
    if unset:
        raise AlignlabError(f"{unset} has no value (???). Set it on the command line "
                            f"({unset}=...) or in the YAML.")


# ---------------------------------------------------------------------------------------------
# The config's shape: the required groups are there, every key is one the schema knows.


def check_structure(raw: dict[str, Any]) -> None:
    """Every required group has a preset, and no key was forced in that the schema lacks."""
    for group in REQUIRED_GROUPS:
        node = raw.get(group)
        if not isinstance(node, dict) or node.get("name") in (None, UNSET):
            options = ", ".join(config.group_options(group))
            raise AlignlabError(f"The config group '{group}' is missing (deleted with ~{group}?): "
                                f"every run needs one, or it runs on the schema's bare "
                                f"defaults. Choose a preset with {group}=<name> ({options}) "
                                f"instead of deleting it.")
    found = unknown_key(raw)
    if found:
        key, valid = found
        leaf = key.rpartition(".")[2]
        raise AlignlabError(f"'{key}' is not a config key.{did_you_mean(leaf, valid)} Run "
                            "`python -m alignlab --cfg job` to see every key.")


# ---------------------------------------------------------------------------------------------
# Interpolations: resolved here, before anything runs, so that one that fails (or yields the
# wrong type) is one clear error instead of a crash at the first use.

# ``${oc.env:NAME}`` (and the old ``${env:NAME}``), possibly with a default after a comma.
_ENV_REF = re.compile(r"\$\{\s*(?:oc\.)?env\s*:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")
# Environment variables that hold a credential: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, GITHUB_TOKEN,
# OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD ... (not MAX_TOKENS or TOKENIZERS_*).
_CREDENTIAL_ENV = re.compile(r"api_?key|access_?key|secret|passw(?:or)?d|credential|private_?key"
                             r"|token(?!s|izer)", re.IGNORECASE)


def _strings(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string in a plain container."""
    return ((key, value) for key, value in _leaves(tree, where) if isinstance(value, str))


def check_env_credentials(raw: Any) -> None:
    """Refuse ``${oc.env:HF_TOKEN}`` and the like: the resolved config is saved in the run
    directory (config.yaml, the trainer's training_args.bin), so the secret would be too."""
    for where, value in _strings(raw):
        for name in _ENV_REF.findall(value):
            if not _CREDENTIAL_ENV.search(name):
                continue
            if re.search(r"key", name, re.IGNORECASE):
                fix = (f"keep the key in the environment and name the variable instead: "
                       f"method.args.api_key_env={name}")
            else:
                fix = (f"keep {name} in the environment only: the Hugging Face libraries read "
                       "the hub token from HF_TOKEN themselves")
            raise AlignlabError(f"'{where}' reads the credential {name} from the environment "
                                "into the config, which is saved in the run directory. Remove "
                                f"the interpolation and {fix}.")


def _outside_hydra_job(err: Exception) -> bool:
    """``${hydra:...}`` (e.g. run_dir) resolves only inside Hydra's job, not while composing."""
    return "HydraConfig was not set" in str(err)


def _reason(err: Exception) -> str:
    """OmegaConf's message in one line, without its ``full_key``/``object_type`` lines."""
    first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    return runs.redact(" ".join(first.split())).rstrip(".")


# ``${other.key}``: a plain reference, whose failure is the referenced key's own.
_REFERENCE = re.compile(r"^\$\{[\w.\[\]]+\}$")


def _resolved_value(parent: DictConfig | ListConfig, key: Any, where: str,
                    errors: list[tuple[bool, str]]) -> Any:
    from omegaconf.errors import InterpolationToMissingValueError

    node = parent._get_node(key)
    if node is None or node._is_missing():
        return UNSET
    try:
        value = parent[key]
    except InterpolationToMissingValueError:
        return node._value()  # refers to a value that is not set, which is reported itself
    except Exception as err:  # OmegaConf raises many types; all mean this value is wrong
        if _outside_hydra_job(err):
            return node._value()
        raw = node._value() if node._is_interpolation() else None
        shown = raw if isinstance(raw, str) else "its interpolation"
        reason = _reason(err)
        if "Environment variable" in reason:
            fix = "Export the variable, give a default (${oc.env:NAME,default}) or a plain value"
        elif "could not be converted" in reason or "is not a valid" in reason:
            fix = f"It must resolve to a value of {where}'s type; fix it or give a plain value"
        else:
            fix = "Fix the interpolation or give a plain value"
        errors.append((isinstance(raw, str) and bool(_REFERENCE.match(raw)),
                       f"'{where}={shown}' does not resolve: {reason}. {fix}."))
        return raw
    if isinstance(value, (DictConfig, ListConfig)):
        return _resolved_tree(value, where, errors)
    return value


def _resolved_tree(node: DictConfig | ListConfig, where: str,
                   errors: list[tuple[bool, str]]) -> Any:
    if node._is_none():
        return None
    if isinstance(node, ListConfig):
        return [_resolved_value(node, i, f"{where}[{i}]", errors) for i in range(len(node))]
    return {key: _resolved_value(node, key, f"{where}.{key}" if where else str(key), errors)
            for key in node}


def _interpolated(tree: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Key paths of the values of a plain (unresolved) container that hold ``${...}``."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _interpolated(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _interpolated(value, (*path, i))
    elif isinstance(tree, str) and "${" in tree:
        yield path


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def resolve(cfg: DictConfig, tree: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config as plain containers with every interpolation resolved (``${hydra:...}``
    left as it is outside Hydra's job); AlignlabError naming the key of one that fails (the
    key whose own interpolation fails, not one that merely refers to it: ``data.seed`` is
    ``${seed}``). Values without ``${`` were type-checked by OmegaConf when they were set.

    ``tree``: ``cfg`` as an unresolved plain container, resolved in place (default: a new one).
    """
    if tree is None:
        tree = OmegaConf.to_container(cfg, resolve=False)
    errors: list[tuple[bool, str]] = []
    for path in list(_interpolated(tree)):
        parent, holder = cfg, tree
        for key in path[:-1]:
            parent, holder = parent._get_node(key), holder[key]
        holder[path[-1]] = _resolved_value(parent, path[-1], _dotted(path), errors)
    if errors:
        raise AlignlabError(min(errors, key=lambda e: e[0])[1])
    return tree


# ---------------------------------------------------------------------------------------------
# Values

# Keys of the free-form constitution mapping whose values have one shape (the others are
# checked by alignlab.constitution when a method reads it).
_CONSTITUTION_SHAPES: dict[str, type] = {"principles": list, "few_shot": list, "name": str,
                                         "path": str, "few_shot_path": str,
                                         "judge_template": str, "judge_prefix": str}


def check_shapes(c: dict[str, Any]) -> None:
    """Mappings are mappings and lists are lists once resolved (``data.columns=${oc.env:X}``
    or ``constitution.few_shot=${seed}`` would crash where they are read)."""
    found = wrong_shape(c)
    constitution = c.get("constitution")
    if not found and isinstance(constitution, dict):
        found = next(((f"constitution.{k}", "a list" if t is list else "a string",
                       constitution[k]) for k, t in _CONSTITUTION_SHAPES.items()
                      if constitution.get(k) is not None and not isinstance(constitution[k], t)),
                     None)
    if found:
        where, expected, value = found
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise AlignlabError(f"{where} must be {expected}, not {type(value).__name__} {shown}. "
                            "Fix the value (or the interpolation that gives it).")


# Fields where a user may reach for inf, and what means that instead.
_NOT_INF = {"max_grad_norm": " (max_grad_norm=0 turns gradient clipping off)"}


def _leaves(tree: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf (not a dict or list) in a plain container."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{where}[{i}]")
    else:
        yield where, tree


def check_finite(c: Any) -> None:
    """No number in the config is inf or nan: no trainer argument, model or data setting means
    anything by them (TRL's fields say "None"/"0" for "no limit"), and inf trains a NaN model
    that reports success."""
    for where, value in _leaves(c):
        if isinstance(value, float) and not math.isfinite(value):
            leaf = re.sub(r"\[\d+\]$", "", where).rpartition(".")[2]
            raise AlignlabError(f"{where}={value} is not a finite number. Give it a finite "
                                f"value{_NOT_INF.get(leaf, '')}, or remove the override.")


def _unset_values(c: Any) -> Iterator[str]:
    return (where for where, value in _leaves(c) if value == UNSET)


def check_partial_groups(c: dict[str, Any]) -> None:
    """The values a recipe stage (``stages.<name>.data/model``) or a hardware preset
    (``hardware.model``) merges into the data or model group have that group's types: the merge
    happens when the stage is set up, where a wrong type would be a crash."""
    from omegaconf.errors import OmegaConfBaseException

    parts = [("hardware.model", (c.get("hardware") or {}).get("model"), config.ModelConfig)]
    for name, stage in (c.get("stages") or {}).items():
        parts += [(f"stages.{name}.data", stage.get("data"), config.DataConfig),
                  (f"stages.{name}.model", stage.get("model"), config.ModelConfig)]
    for where, values, schema in parts:
        if not values:
            continue
        try:
            OmegaConf.merge(OmegaConf.structured(schema), values)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or ""
            raise AlignlabError(f"{where}.{key} has the wrong type: {_reason(err)}. Fix the "
                                "value in the override or the recipe.") from None


def _recipe_file_stages(name: Any) -> list[str]:
    """The stages a shipped recipe file defines (those not in its run order included)."""
    path = config.conf_dir() / "recipe" / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        return []
    stages = OmegaConf.load(path).get("stages") or {}
    return [str(k) for k in stages]


def check_recipe_names(c: dict[str, Any]) -> None:
    """``stages.<name>`` and ``inputs.<name>`` name stages of the recipe (a typo would be
    ignored: the stage runs without the override, or is trained again)."""
    recipe = c.get("recipe") or {}
    name = recipe.get("name")
    order = [str(s) for s in recipe.get("stages") or []]
    stages, inputs = c.get("stages") or {}, c.get("inputs") or {}
    # What the recipe is read by before Hydra's run starts (a stage's args/data/model are only
    # merged into the stage's config, which resolves later): ${hydra:...} fails there.
    early = [("recipe", recipe), ("from_stage", c.get("from_stage")), ("inputs", inputs),
             *((f"stages.{k}", {f: v for f, v in (s or {}).items()
                                if f not in ("args", "data", "model") or isinstance(v, str)})
               for k, s in stages.items())]
    for where, value in ((w, v) for section, tree in early for w, v in _strings(tree, section)):
        if "${hydra:" in value:
            raise AlignlabError(f"{where}={value} uses ${{hydra:...}}, which resolves only "
                                "inside Hydra's run, after the recipe is checked. Give the "
                                "stage name or path itself.")
    for group, given in (("stages", stages), ("inputs", inputs)):
        if given and not name:
            first = next(iter(given))
            raise AlignlabError(f"'{group}.{first}' is set, but no recipe is chosen, so it "
                                "would be ignored. Add recipe=<name> "
                                f"({', '.join(config.group_options('recipe'))}), or drop it.")
    defined = [*order, *(s for s in _recipe_file_stages(name) if s not in order)]
    for stage in stages:
        if stage not in defined:
            raise AlignlabError(f"'stages.{stage}' is not a stage of recipe '{name}'."
                                f"{did_you_mean(str(stage), defined)} A new stage also needs "
                                "its place in recipe.stages.")
    start = c.get("from_stage")
    for stage in inputs:
        if stage not in order:
            raise AlignlabError(f"'inputs.{stage}' is not a stage of recipe '{name}'."
                                f"{did_you_mean(str(stage), order)}")
        if start in order and order.index(stage) >= order.index(start):
            raise AlignlabError(f"inputs.{stage} would be ignored: from_stage={start} runs "
                                f"'{stage}' itself. inputs stand in for the stages before "
                                f"from_stage ({', '.join(order[:order.index(start)]) or 'none'})"
                                "; drop it or start later.")
        if not start:
            raise AlignlabError(f"inputs.{stage} would be ignored: without from_stage every "
                                f"stage runs, '{stage}' too. Add from_stage=<the first stage "
                                "to run> to start after it, or drop the input.")


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


def check_reference(c: Mapping[str, Any], info: Any) -> None:
    """``method.reference`` names a model only methods that load one read; elsewhere it would
    be silently ignored (ORPO and SFT have no reference model)."""
    value = c["method"].get("reference")
    if value and not info.reads_reference:
        readers = ", ".join(s.name for s in methods.REGISTRY.values() if s.reads_reference)
        raise AlignlabError(f"method={info.name} loads no reference model, so "
                            f"method.reference='{value}' would be ignored. Remove "
                            f"method.reference, or use a method that has one ({readers}).")


def _validate_hardware(c: dict[str, Any], info: methods.Method) -> None:
    hw = c["hardware"]
    if hw.get("omp_wait_policy") not in (None, "passive", "active"):
        raise AlignlabError(f"hardware.omp_wait_policy={hw.get('omp_wait_policy')!r} is "
                            "unknown. Use passive (the default), active, or null.")
    spins = hw.get("omp_spin_count")
    if spins is not None and (isinstance(spins, bool) or not isinstance(spins, int)
                              or spins < 0):
        raise AlignlabError(f"hardware.omp_spin_count={spins!r} is not a count of spins. Use "
                            "a whole number >= 0 (1000, the default, is about 10 us), or null.")
    quant = c["model"].get("quantization") or hw.get("model", {}).get("quantization")
    if info.no_sharding and _shards_weights(hw.get("accelerate_config")):
        # Checked first: it is wrong on any machine (PPO: sampling from sharded weights needs
        # every rank in each generate step, or ranks that finish early deadlock; and its loop
        # steps a plain optimizer, not a DeepSpeed engine).
        raise AlignlabError(f"method={info.name} does not support hardware={hw['name']}: "
                            f"{info.no_sharding} Use hardware=multi-gpu (DDP), with "
                            "model.lora=true if the model does not fit one GPU.")
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
