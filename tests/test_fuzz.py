"""Bad input found by fuzzing and by users: refused up front, as one clear line.

Two parts:

* ``REGRESSIONS``: cases a user (or the fuzzer below) found that were accepted, ignored or
  crashed; each runs the real CLI in a fresh process (:func:`tests.test_bad_inputs._run_case`)
  and must exit 2 with one ``alignlab: error:`` line, no traceback and no run directory.
* A property-based fuzzer (hypothesis) of override strings and data files, run through the real
  up-front validation in this process (:func:`alignlab.cli.compose`, which composes with Hydra
  and validates). The invariant: an AlignlabError whose message is one line (and never echoes a
  secret), or a config that composes, resolves and prints; never any other exception; nothing
  is written anywhere; torch, transformers and trl are not imported.

The suite runs a short seeded session (a few hundred cases, well under a minute). For a long
one: ``ALIGNLAB_FUZZ_EXAMPLES=10000 pytest -n0 tests/test_fuzz.py -k fuzz`` (that many cases for
each fuzz test; the data-file and pure-Hydra tests take a fifth of it).

Hydra's composition of the config groups costs ~100 ms a call, which would make thousands of
cases take many minutes; :func:`fast_hydra` memoizes it per set of *group* overrides
(``method=dpo``, ``~model``, ``recipe=dpo``) and applies the other overrides with Hydra's own
code (``ConfigLoaderImpl._apply_overrides_to_config``), exactly as Hydra does after composing.
``test_fast_hydra_matches_hydra`` checks that this gives what Hydra gives, and
``test_fuzz_overrides_through_plain_hydra`` fuzzes without it.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, one_error_line
from tests.test_bad_inputs import PAIR, _run_case

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the regressions still run; the fuzz tests are skipped, saying why

    class _Missing:
        def __getattr__(self, name: str) -> _Missing:
            return self

        def __call__(self, *args: Any, **kwargs: Any) -> _Missing:
            return self

        def __iter__(self) -> Iterator[Any]:
            return iter(())

    def given(*args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]
        return pytest.mark.skip(reason="hypothesis is not installed (pip install -e .[dev])")

    def settings(*args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]
        return lambda f: f

    st = HealthCheck = _Missing()  # type: ignore[assignment]

HF_SECRET = "hf_" + "Fuzz0Secret1Token2Value3Abcdefghij"  # looks like a hub token
SK_SECRET = "sk-" + "fuzz0secret1api2key3value4abcdefghijkl"  # looks like an API key
HEAVY = ("torch", "transformers", "trl")

# ---------------------------------------------------------------------------------------------
# Regressions: (case id, arguments, a fragment the message must contain, environment)

Regression = tuple[str, list[str], str, dict[str, str]]
REGRESSIONS: list[Regression] = [
    # --- a. non-finite numbers (inf trained a NaN model that reported success)
    ("lr-inf", ["method.args.learning_rate=inf"], "method.args.learning_rate=inf is not a finite",
     {}),
    ("dpo-beta-inf", ["method=dpo", "method.args.beta=inf"], "method.args.beta=inf", {}),
    ("max-grad-norm-inf", ["method.args.max_grad_norm=inf"], "max_grad_norm=0 turns", {}),
    ("dpo-mixup-alpha-nan", ["method=dpo", "method.args.ref_model_mixup_alpha=nan"],
     "ref_model_mixup_alpha=nan", {}),
    ("hardware-args-inf", ["hardware.args.max_grad_norm=inf"], "hardware.args.max_grad_norm",
     {}),
    ("model-train-args-inf", ["model.train_args.default.learning_rate=inf"],
     "model.train_args.default.learning_rate=inf", {}),
    ("recipe-stage-beta-inf", ["recipe=dpo", "stages.dpo.args.beta=inf"],
     "stages.dpo.args.beta=inf", {}),
    ("lora-alpha-inf", ["model.lora.alpha=inf"], "model.lora.alpha=inf", {}),
    ("lora-rank-inf", ["model.lora.r=inf"], "model.lora.r=inf", {}),  # was OverflowError
    ("loss-weights-nan", ["method=dpo", "method.args.loss_type=[sigmoid,sft]",
                          "method.args.loss_weights=[1.0,nan]"],
     "method.args.loss_weights[1]=nan", {}),
    # --- b. deleting a required config group ran on the schema's bare defaults
    ("delete-method", ["~method"], "config group 'method' is missing", {}),
    ("delete-model", ["~model"], "config group 'model' is missing", {}),
    ("delete-data", ["~data"], "config group 'data' is missing", {}),
    ("delete-hardware", ["~hardware"], "config group 'hardware' is missing", {}),
    # --- c. unknown keys forced in with + / ++ were accepted and ignored
    ("force-add-typo", ["++quick_evall=false"], "Did you mean 'quick_eval'", {}),
    ("append-typo", ["+quick_evall=false"], "Did you mean 'quick_eval'", {}),
    ("force-add-toy-typo", ["++data.toy.n_sftt=10"], "Did you mean 'n_sft'", {}),
    ("force-add-recipe-key", ["++recipe.stagess=[sft]"], "Did you mean 'stages'", {}),
    # hardware.model and a stage's data/model merge into the model/data groups: a typo
    # crashed mid-recipe (ConfigKeyError)
    ("hardware-model-typo", ["++hardware.model.quantisation=4bit"],
     "Did you mean 'quantization'", {}),
    ("recipe-stage-data-typo", ["recipe=dpo", "stages.dpo.data.formatt=trl"],
     "Did you mean 'format'", {}),
    ("recipe-stage-model-typo", ["recipe=dpo", "stages.dpo.model.pth=x"], "stages.dpo.model.pth",
     {}),
    # --- d. inputs/stages naming no stage of the recipe were ignored
    ("recipe-input-typo", ["recipe=dpo", "inputs.rewrd={tmp}"],
     "Valid choices: dpo, eval, export, sft", {}),
    ("recipe-input-typo-near", ["recipe=dpo", "from_stage=dpo", "inputs.sft={tmp}/m",
                                "inputs.sfr={tmp}/m"], "Did you mean 'sft'", {}),
    ("recipe-input-without-from-stage", ["recipe=dpo", "inputs.sft={tmp}"], "from_stage", {}),
    ("recipe-input-of-a-stage-that-runs", ["recipe=dpo", "from_stage=sft", "inputs.sft={tmp}"],
     "would be ignored", {}),
    ("input-without-recipe", ["inputs.sft={tmp}"], "no recipe is chosen", {}),
    # --- e. an interpolation that does not resolve was a crash (exit 1) at the first use
    ("interpolation-wrong-type", ["seed=${oc.env:HOME}"], "'seed=${oc.env:HOME}' does not resolve",
     {}),
    ("interpolation-env-unset", ["method.args.run_name=${oc.env:ALIGNLAB_FUZZ_UNSET}"],
     "Environment variable 'ALIGNLAB_FUZZ_UNSET' not found", {}),
    ("interpolation-missing-key", ["method.args.run_name=${nope.key}"],
     "method.args.run_name=${nope.key}", {}),
    ("interpolation-bool", ["quick_eval=${oc.env:HOME}"], "not a valid bool", {}),
    ("interpolation-recursive", ["method.args.run_name=${method.args.run_name}"], "Recursive",
     {}),
    ("value-unset", ["seed=???"], "seed has no value", {}),
    ("interpolation-env-number-is-a-string",
     ["method.args.learning_rate=${oc.env:ALIGNLAB_FUZZ_LR}"], "oc.decode",
     {"ALIGNLAB_FUZZ_LR": "1e-4"}),
    # --- f. secrets through interpolation reached training_args.bin
    ("secret-env-hf-token", ["method.args.run_name=${oc.env:HF_TOKEN}"],
     "reads the credential HF_TOKEN", {"HF_TOKEN": HF_SECRET}),
    ("secret-env-api-key", ["method.args.run_name=${oc.env:OPENAI_API_KEY}"],
     "method.args.api_key_env=OPENAI_API_KEY", {"OPENAI_API_KEY": SK_SECRET}),
    ("secret-env-in-a-stage", ["recipe=dpo", "stages.dpo.args.run_name=x-${oc.env:HF_TOKEN}"],
     "stages.dpo.args.run_name", {"HF_TOKEN": HF_SECRET}),
    ("secret-resolved-value", ["method.args.run_name=${oc.env:ALIGNLAB_FUZZ_VALUE}"],
     "'method.args.run_name' holds a secret", {"ALIGNLAB_FUZZ_VALUE": HF_SECRET}),
    # --- found by the fuzzer (each was a crash: a traceback and exit 1)
    ("fuzz-deeply-nested-json", ["data=local", "method=dpo", "data.path={tmp}/deep.json"],
     "nested too deeply", {}),  # RecursionError in json.loads
    ("fuzz-few-shot-not-a-list", ["method=cai", "++constitution.few_shot=5"],
     "constitution.few_shot must be a list", {}),  # TypeError in constitution.parse
    ("fuzz-hydra-in-a-stage-link", ["recipe=dpo", "stages.dpo.data_from=${hydra:job.name}"],
     "resolves only inside Hydra's run", {}),  # InterpolationResolutionError in pipeline.check
    ("fuzz-columns-not-a-mapping", ["data.columns=${oc.env:ALIGNLAB_FUZZ_UNSET,1}"],
     "data.columns must be a mapping", {}),  # AttributeError in checks.check_data_values
    ("fuzz-method-args-not-a-mapping", ["method.args=${seed}"], "method.args must be a mapping",
     {}),  # ValueError in validation.validate
    ("fuzz-stage-not-a-mapping", ["recipe=dpo", "stages.dpo=${seed}"],
     "stages.dpo must be a mapping", {}),  # AttributeError in validation
    ("fuzz-stage-data-wrong-type", ["recipe=dpo", "stages.eval.data.max_samples=many"],
     "stages.eval.data.max_samples has the wrong type", {}),  # ValidationError in the merge
    ("fuzz-secret-in-a-value-message", ["data.columns=${oc.env:ALIGNLAB_FUZZ_VALUE}"],
     "'data.columns' holds a secret", {"ALIGNLAB_FUZZ_VALUE": HF_SECRET}),  # was echoed
    # Hydra resolves the value to compare it, and cli._explain quotes its message
    ("fuzz-secret-in-a-hydra-message", ["method.args.run_name=${oc.env:ALIGNLAB_FUZZ_VALUE}",
                                        "~method.args.run_name=x"], "Could not delete",
     {"ALIGNLAB_FUZZ_VALUE": HF_SECRET}),
]


def make_files(tmp: Path) -> None:
    """What the cases point at: a model folder and a JSON file nested too deeply to parse."""
    (tmp / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    (tmp / "m").mkdir(exist_ok=True)
    (tmp / "m" / "config.json").write_text('{"model_type": "llama"}')
    (tmp / "m" / "model.safetensors").write_bytes(b"\0" * 8)
    (tmp / "m" / "tokenizer.json").write_text("{}")


def _escaped(arg: str) -> str:
    """``_run_case`` fills in ``{tmp}`` with str.format: keep ``${...}`` as it is."""
    return arg.replace("{", "{{").replace("}", "}}").replace("{{tmp}}", "{tmp}")


@pytest.mark.parametrize(("args", "expect", "env"),
                         [pytest.param(a, e, v, id=i) for i, a, e, v in REGRESSIONS])
def test_regression_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      args: list[str], expect: str, env: dict[str, str]) -> None:
    """Exit code 2, one ``alignlab: error:`` line naming the problem, no traceback, no run
    directory, no heavy import, and never a secret echoed."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ALIGNLAB_FUZZ_UNSET", raising=False)
    make_files(tmp_path)
    proc, run_dir, heavy = _run_case(tmp_path, [_escaped(a) for a in args], None)
    line = one_error_line(proc)
    assert expect in line, line
    assert not run_dir.exists()
    assert not heavy, f"imported {heavy} before refusing the input"
    assert HF_SECRET not in proc.stderr + proc.stdout
    assert SK_SECRET not in proc.stderr + proc.stdout


def test_regression_ids_are_unique() -> None:
    assert len({r[0] for r in REGRESSIONS}) == len(REGRESSIONS)


# ---------------------------------------------------------------------------------------------
# Hydra's group composition, memoized (see the module docstring).


_MEMO: dict[Any, Any] = {}  # (config name, group overrides, mode) -> composed config or error


@contextlib.contextmanager
def fast_hydra() -> Iterator[dict[Any, Any]]:
    """Within: Hydra composes each set of group overrides once; the other overrides are applied
    to a copy with Hydra's own ``_apply_overrides_to_config``. Yields the memo."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    original = ConfigLoaderImpl._load_configuration_impl
    memo = _MEMO

    def load(self: Any, config_name: str | None, overrides: list[str], run_mode: Any,
             from_shell: bool = True, validate_sweep_overrides: bool = True) -> Any:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        if any(o.key_or_group.startswith("hydra") or o.package is not None for o in parsed):
            return original(self, config_name, overrides, run_mode, from_shell,
                            validate_sweep_overrides)
        if validate_sweep_overrides:
            self.validate_sweep_overrides_legal(overrides=parsed, run_mode=run_mode,
                                                from_shell=from_shell)
        groups, rest = [], []
        for o in parsed:  # as hydra's defaults_list.Overrides sorts them
            is_group = self.repository.group_exists(o.key_or_group)
            if is_group and not o.is_sweep_override() and not isinstance(o.value(), dict):
                groups.append(o.input_line)
            elif not o.is_sweep_override():
                rest.append(o)
        key = (config_name, tuple(groups), run_mode, from_shell)
        if key not in memo:
            try:
                memo[key] = original(self, config_name, groups, run_mode, from_shell,
                                     validate_sweep_overrides)
            except Exception as err:  # raised again for every call with these groups
                memo[key] = err
        base = memo[key]
        if isinstance(base, Exception):
            raise copy.copy(base)
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(rest, cfg)
        return cfg

    ConfigLoaderImpl._load_configuration_impl = load
    try:
        yield memo
    finally:
        ConfigLoaderImpl._load_configuration_impl = original


# ---------------------------------------------------------------------------------------------
# The schema the fuzzer draws keys from.


def _leaf_keys(tree: Any, where: str = "") -> Iterator[str]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            here = f"{where}.{key}" if where else str(key)
            yield here
            yield from _leaf_keys(value, here)


_CATALOGUE: dict[str, Any] = {}


def catalogue() -> dict[str, Any]:
    """Keys of composed configs (default, a few methods, two recipes), trainer-argument names
    of each method's dataclass, and each config group's options."""
    if _CATALOGUE:
        return _CATALOGUE
    from omegaconf import OmegaConf

    from alignlab import cli, config
    from alignlab.methods import load, names

    keys: set[str] = set()
    for base in ([], ["method=dpo"], ["method=ppo", "method.reward_funcs=[toy_judge]"],
                 ["method=judge"], ["recipe=instructgpt"], ["recipe=constitutional"]):
        keys |= set(_leaf_keys(OmegaConf.to_container(cli.compose(base), resolve=False)))
    args: set[str] = set()
    for name in names():
        args |= set(config.dataclass_fields(load(name).args_class))
    lora = set(config.dataclass_fields("peft.tuners.lora.config:LoraConfig"))
    _CATALOGUE.update(
        keys=sorted(k for k in keys if not k.startswith("constitution.principles")),
        args=sorted(args), lora=sorted(lora | set(config.LORA_DEFAULTS)),
        groups={g: config.group_options(g) for g in config.GROUPS},
        stages=["sft", "dpo", "eval", "reward", "ppo", "skills", "cai", "judge", "rewrd"])
    return _CATALOGUE


def _typo(word: str, data: st.DataObject) -> str:
    if not word:
        return "x"
    i = data.draw(st.integers(0, len(word) - 1))
    kind = data.draw(st.sampled_from(["drop", "double", "swap", "upper", "suffix"]))
    if kind == "drop":
        return word[:i] + word[i + 1:] or "x"
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "upper":
        return word.upper()
    return word + "s"


def draw_key(data: st.DataObject) -> str:
    cat = catalogue()
    kind = data.draw(st.sampled_from(["schema", "schema", "schema", "args", "args", "lora",
                                      "train_args", "hardware", "stage", "inputs", "columns",
                                      "new"]))
    if kind == "schema":
        key = data.draw(st.sampled_from(cat["keys"]))
    elif kind == "args":
        key = "method.args." + data.draw(st.sampled_from(cat["args"]))
    elif kind == "lora":
        key = "model.lora." + data.draw(st.sampled_from(cat["lora"]))
    elif kind == "train_args":
        where = data.draw(st.sampled_from(["default", "dpo", "sft", "grpo", "nope"]))
        key = f"model.train_args.{where}." + data.draw(st.sampled_from(cat["args"]))
    elif kind == "hardware":
        key = "hardware." + data.draw(st.sampled_from(
            ["args." + a for a in cat["args"][:40]] + ["model.quantization", "model.lora",
                                                       "model.dtype", "model.nope"]))
    elif kind == "stage":
        part = data.draw(st.sampled_from(["args.beta", "args.learning_rate", "args.max_steps",
                                          "data.format", "data.max_samples", "model.path",
                                          "init", "reference", "method", "data_from"]))
        key = f"stages.{data.draw(st.sampled_from(cat['stages']))}.{part}"
    elif kind == "inputs":
        key = "inputs." + data.draw(st.sampled_from(cat["stages"]))
    elif kind == "columns":
        key = "data.columns" + data.draw(st.sampled_from(["", ".chosen", ".rejected", ".prompt"]))
    else:
        key = data.draw(st.sampled_from(["quick_evall", "seeed", "methods.name", "foo",
                                         "model.lora.enabled", "recipe.stages"]))
    if data.draw(st.integers(0, 9)) == 0:  # a typo somewhere in the key
        parts = key.split(".")
        j = data.draw(st.integers(0, len(parts) - 1))
        parts[j] = _typo(parts[j], data)
        key = ".".join(parts)
    return key


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=12)
_NUMBERS = st.one_of(
    st.integers(-(2 ** 70), 2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "-inf", "+inf", "nan", "NaN", "1e309", "-1e309", "-0", "0", "1",
                     "-1", "0.5", "1e-12", "1_000", "2.0e-3", "0x10", "1.5", "99999999999999"]))
_INTERPOLATIONS = st.sampled_from([
    "${seed}", "${data.seed}", "${method.name}", "${model.path}", "${oc.env:HOME}",
    "${oc.env:ALIGNLAB_FUZZ_UNSET,1}", "${oc.env:ALIGNLAB_FUZZ_UNSET}", "'${oc.decode:\"1e-4\"}'",
    "${now:%Y}", "${oc.select:seed,1}", "${run_name:a,b}", "${oc.env:HF_TOKEN}",
    "${oc.env:OPENAI_API_KEY,x}", "${oc.env:ALIGNLAB_FUZZ_VALUE}", "${oc.env:ALIGNLAB_FUZZ_LR}",
    "x_${seed}", "${hydra:runtime.output_dir}", "${hydra:nope}", "${run_dir}", "${",
    "${oc.env:", "${nope.key}", "${oc.nope:1}", "${seed", "}${", "'${${seed}}'", "${method}",
    "${oc.create:'{a: 1}'}", "${oc.dict.keys:method.args}", "\\${seed}", "$seed", "${.}",
    "${..seed}", "${oc.env:HOME}/x", "${stages}", "${recipe.stages}"])


def draw_value(data: st.DataObject, depth: int = 0) -> str:
    # mostly values that parse, so that most cases reach the validation behind Hydra
    kind = data.draw(st.sampled_from(["number"] * 5 + ["word"] * 4 + ["interp"] * 2 + [
        "text", "special", "list", "dict", "quoted", "path", "path"] + ["sweep"] * (depth == 0)
        if depth < 2 else ["number", "word", "special"]))
    if kind == "number":
        return data.draw(_NUMBERS)
    if kind == "text":
        return data.draw(_TEXT)
    if kind == "word":
        return data.draw(st.sampled_from(["sft", "dpo", "toy", "trl", "cpu", "cuda", "sigmoid",
                                          "ipo", "true", "false", "True", "yes", "no", "llama",
                                          "builtin:llama-small", "builtin:nope", "4bit", "auto",
                                          "all-linear", "steps", "no", "hf_abc", "café", "名前"]))
    if kind == "interp":
        return data.draw(_INTERPOLATIONS)
    if kind == "special":
        return data.draw(st.sampled_from(["???", "null", "None", "", "''", '""', "~", " ", "[]",
                                          "{}", "[[]]", "{a:{b:{c:1}}}", "x" * 300, "a=b",
                                          "'a,b'", "\\'", "'", '"', "[1,", "{a:", "}", "]"]))
    if kind == "list":
        n = data.draw(st.integers(0, 3))
        return "[" + ",".join(draw_value(data, depth + 1) for _ in range(n)) + "]"
    if kind == "dict":
        n = data.draw(st.integers(0, 3))
        keys = [data.draw(st.sampled_from(["a", "r", "beta", "chosen", "name", "path", "1"]))
                for _ in range(n)]
        return "{" + ",".join(f"{k}:{draw_value(data, depth + 1)}" for k in keys) + "}"
    if kind == "sweep":
        return ",".join(draw_value(data, 2) for _ in range(data.draw(st.integers(2, 3))))
    if kind == "quoted":
        inner = data.draw(_TEXT).replace("\\", "\\\\")
        quote = data.draw(st.sampled_from(["'", '"']))
        return quote + inner.replace(quote, "\\" + quote) + quote
    # paths: inside the fuzz directory (cwd and HOME), or nowhere
    return data.draw(st.sampled_from(["data.jsonl", "./m", "~/m", "sub/d.jsonl", "nope/x.jsonl",
                                      "/nonexistent/alignlab/x", "m/model.safetensors",
                                      "c.yaml", "f", "a" * 300, "/nonexistent/" + "b" * 300]))


def draw_override(data: st.DataObject) -> str:
    prefix = data.draw(st.sampled_from([""] * 9 + ["+", "++", "++", "~"]))
    if data.draw(st.integers(0, 7)) == 0:  # a group choice
        group = data.draw(st.sampled_from(sorted(catalogue()["groups"])))
        options = catalogue()["groups"][group]
        choice = data.draw(st.sampled_from(options)) if options else "x"
        if data.draw(st.integers(0, 4)) == 0:
            choice = _typo(choice, data)
        return f"{prefix}{group}" if prefix == "~" and data.draw(st.booleans()) \
            else f"{prefix}{group}={choice}"
    key = draw_key(data)
    if prefix == "~" and data.draw(st.booleans()):
        return f"~{key}"
    return f"{prefix}{key}={draw_value(data)}"


_BASES = [[], [], [], ["method=dpo"], ["method=kto"], ["method=reward"],
          ["method=grpo", "method.reward_funcs=[toy_judge]"], ["method=eval"], ["method=cai"],
          ["method=judge"], ["method=ppo", "method.reward_funcs=[toy_judge]"],
          ["data=local", "method=dpo", "data.path=data.jsonl"], ["model.lora=true"],
          ["recipe=dpo"], ["recipe=instructgpt", "from_stage=reward", "inputs.sft=m"]]


@st.composite
def override_lists(draw: Any) -> list[str]:
    data = draw(st.data())
    base = data.draw(st.sampled_from(_BASES))
    return [*base, *(draw_override(data) for _ in range(data.draw(st.integers(1, 3))))]


# ---------------------------------------------------------------------------------------------
# The invariant


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@contextlib.contextmanager
def fuzz_world() -> Iterator[Path]:
    """A scratch folder that is the working directory and HOME (so relative paths, ``~`` and
    ``${oc.env:HOME}`` land in it), with a model folder and a data file to point at, and the
    variables the interpolations read."""
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="alignlab-fuzz-") as tmp:
        world = Path(tmp)
        (world / "m").mkdir()
        (world / "m" / "config.json").write_text('{"model_type": "llama"}')
        (world / "m" / "model.safetensors").write_bytes(b"\0" * 8)
        (world / "m" / "tokenizer.json").write_text("{}")
        (world / "data.jsonl").write_text(json.dumps(PAIR) + "\n")
        (world / "sub").mkdir()
        (world / "c.yaml").write_text("principles: []\n")
        (world / "f").write_text("x")
        os.environ.update(HOME=str(world), HF_TOKEN=HF_SECRET, OPENAI_API_KEY=SK_SECRET,
                          ALIGNLAB_FUZZ_VALUE=HF_SECRET, ALIGNLAB_FUZZ_LR="1e-4")
        os.environ.pop("ALIGNLAB_FUZZ_UNSET", None)
        os.chdir(world)
        try:
            yield world
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)


class Tally:
    """Counts of outcomes, printed at the end of a session (``-s`` shows them)."""

    def __init__(self) -> None:
        self.composed = self.refused = 0
        self.messages: dict[str, int] = {}

    def add(self, message: str | None) -> None:
        if message is None:
            self.composed += 1
            return
        self.refused += 1
        head = re.sub(r"'[^']*'|\S+=\S+", "_", message)[:48]
        self.messages[head] = self.messages.get(head, 0) + 1


def check_one(overrides: list[str], world: Path, tally: Tally | None = None) -> Any:
    """The invariant for one case; returns the composed config or the AlignlabError."""
    from omegaconf import OmegaConf

    from alignlab import cli, validation
    from alignlab.errors import AlignlabError

    before, root_before = _snapshot(world), set(os.listdir(ROOT))
    heavy_before = {m for m in HEAVY if m in sys.modules}
    try:
        cfg = cli.compose(list(overrides))
    except AlignlabError as err:
        message = str(err)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        assert HF_SECRET not in message and SK_SECRET not in message, message
        outcome: Any = err
    else:
        message = None
        OmegaConf.to_yaml(cfg)  # what --cfg job prints
        validation.resolve(cfg)  # every interpolation resolves (Hydra's own are left)
        outcome = cfg
    if tally is not None:
        tally.add(message)
    assert _snapshot(world) == before, f"{overrides} wrote {_snapshot(world) - before}"
    assert set(os.listdir(ROOT)) == root_before, f"{overrides} wrote into {ROOT}"
    assert {m for m in HEAVY if m in sys.modules} == heavy_before, f"{overrides} imported them"
    return outcome


def _examples(default: int, share: float = 1.0) -> int:
    long = os.environ.get("ALIGNLAB_FUZZ_EXAMPLES")
    return max(1, int(int(long) * share)) if long else default


_SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                 suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    with fuzz_world() as folder:
        yield folder


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    t = Tally()
    yield t
    print(f"\n[fuzz] composed {t.composed}, refused {t.refused}: "
          + ", ".join(f"{k!r}: {v}" for k, v in sorted(t.messages.items(), key=lambda x: -x[1])))


@given(overrides=override_lists())
@settings(max_examples=_examples(250), **_SETTINGS)
def test_fuzz_overrides(world: Path, tally: Tally, overrides: list[str]) -> None:
    """Overrides drawn from the schema, mutated: one clear line or a config, nothing else."""
    with fast_hydra():
        check_one(overrides, world, tally)


@given(overrides=override_lists())
@settings(max_examples=_examples(20, 0.2), **_SETTINGS)
def test_fuzz_overrides_through_plain_hydra(world: Path, overrides: list[str]) -> None:
    """The same, composed by Hydra itself on every call (slow: a few cases)."""
    check_one(overrides, world)


def _same(a: Any, b: Any) -> bool:
    from omegaconf import OmegaConf

    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return OmegaConf.to_container(a, resolve=False) == OmegaConf.to_container(b, resolve=False)


@given(overrides=override_lists())
@settings(max_examples=_examples(20, 0.05), **_SETTINGS)
def test_fast_hydra_matches_hydra(world: Path, overrides: list[str]) -> None:
    """The memoized composition gives what Hydra gives: the same config or the same error."""
    real = check_one(overrides, world)
    with fast_hydra():
        fast = check_one(overrides, world)
    assert _same(real, fast), (overrides, real, fast)


# ---------------------------------------------------------------------------------------------
# Data files, checked by the same up-front validation (data.path pointing at them)

_ROWS = [
    PAIR,
    {"prompt": "What is 3+4?", "chosen": " 7.", "rejected": " 8."},
    {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
     "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]},
    {"prompt": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"prompt": "hi", "completion": "hello", "label": True},
]
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT,
                  st.lists(st.integers(), max_size=3), st.just({"role": 1, "content": None}),
                  st.just([[[["deep"]]]]), st.just("x" * 5000))


@st.composite
def data_files(draw: Any) -> tuple[str, bytes]:
    """(file name, bytes): valid rows, mutated, serialized, encoded, maybe compressed and cut."""
    rows = [copy.deepcopy(draw(st.sampled_from(_ROWS))) for _ in range(draw(st.integers(0, 5)))]
    for row in rows:
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from([*sorted(row), "extra"]))
            action = draw(st.sampled_from(["drop", "junk", "rename", "nest"]))
            if action == "drop":
                row.pop(key, None)
            elif action == "junk":
                row[key] = draw(_JUNK)
            elif action == "rename":
                row[key + "x"] = row.pop(key, None)
            else:
                row[key] = {"inner": row.get(key)}
    form = draw(st.sampled_from(["jsonl", "jsonl", "list", "columns", "deep", "raw"]))
    if form == "jsonl":
        sep = draw(st.sampled_from(["\n", "\r\n", "\n\n", "\n \n"]))
        text = sep.join(json.dumps(r, ensure_ascii=draw(st.booleans())) for r in rows)
        text += draw(st.sampled_from(["", "\n", "\n{", "\n]", "\n\x00"]))
    elif form == "list":
        text = json.dumps(rows, indent=draw(st.sampled_from([None, 1])))
    elif form == "columns":
        keys = sorted({k for r in rows for k in r})
        text = json.dumps({k: [r.get(k) for r in rows] for k in keys})
    elif form == "deep":
        n = draw(st.sampled_from([10, 900, 5000, 50_000]))
        text = draw(st.sampled_from(["[", '{"a":'])) * n + "1" + "]" * n
    else:
        text = draw(_TEXT)
    if draw(st.integers(0, 9)) == 0:  # a very long line (over 1 MiB)
        text += "\n" + json.dumps({"prompt": "x" * ((1 << 20) + 10)})
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1",
                                     "utf-16", "cp1252"]))
    blob = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 5)) == 0:
        blob = blob[:draw(st.integers(0, len(blob)))]  # truncated
    suffix = draw(st.sampled_from([".jsonl", ".jsonl", ".json", ".jsonl.gz", ".json.gz",
                                   ".parquet", ".csv", ".txt", ""]))
    if suffix.endswith(".gz"):
        blob = gzip.compress(blob)
        if draw(st.booleans()):
            blob = blob[:draw(st.integers(0, len(blob)))]
    if suffix == ".parquet":
        blob = draw(st.sampled_from([b"", b"PAR1", b"PAR1" + blob + b"PAR1", blob]))
    return "d" + suffix, blob


@given(files=st.lists(data_files(), min_size=1, max_size=3),
       folder=st.booleans(),
       method=st.sampled_from([["method=dpo"], ["method=kto"], ["method=sft"],
                               ["method=reward"], ["method=eval"],
                               ["method=grpo", "method.reward_funcs=[toy_judge]"]]))
@settings(max_examples=_examples(120, 0.2), **_SETTINGS)
def test_fuzz_data_files(world: Path, tally: Tally, files: list[tuple[str, bytes]],
                         folder: bool, method: list[str]) -> None:
    """Data files from valid rows, mutated: one clear line or a config, nothing else."""
    with tempfile.TemporaryDirectory(dir=world, prefix="data-") as tmp:
        where = Path(tmp)
        for i, (name, blob) in enumerate(files):
            (where / f"{i}{name}").write_bytes(blob)
        path = where if folder else where / f"0{files[0][0]}"
        with fast_hydra():
            check_one(["data=local", *method, f"data.path={path}"], world, tally)
