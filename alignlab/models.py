"""Loading models and tokenizers: hub ids, local folders and the built-in llama-small alike.

Every model goes through ``from_pretrained`` on a folder or hub id. The built-in model is first
materialised into a cache folder (config + tokenizer from the package, weights from the seed), so
the offline default exercises the same code as an 8B hub model. Safe by default: no remote code,
safetensors only, tokens from the environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alignlab import gguf, runs
from alignlab.config import normalize_lora, to_plain
from alignlab.errors import AlignlabError

ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    """Where built-in models are materialised (``ALIGNLAB_CACHE`` or ~/.cache/alignlab)."""
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))


def assets_digest(name: str) -> str:
    """A short hash of a built-in model's shipped config and tokenizer (its cache key)."""
    src = ASSETS / name
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.glob("*.json*")))
                          ).hexdigest()[:10]


def build_builtin(name: str, seed: int) -> Path:
    """Random-init weights for a built-in model, saved once per (assets, seed) and reused."""
    src = ASSETS / name
    out = cache_dir() / f"{name}-seed{seed}-{assets_digest(name)}"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temp folder and rename, so a crash or a second rank never sees half a model.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_path(model_cfg: Any, seed: int) -> str:
    """The folder or hub id to load for ``model_cfg`` (building built-in models on demand)."""
    path = str(model_cfg.path)
    if path.startswith("builtin:"):
        return str(build_builtin(path.split(":", 1)[1], seed))
    local = Path(path).expanduser()
    gguf_file = model_cfg.get("gguf_file")
    if gguf_file:  # a GGUF inside the folder ``path`` (or a path of its own)
        return str(gguf.convert(local / gguf_file if local.is_dir() else gguf_file, cache_dir()))
    if gguf.is_gguf(path):
        return str(gguf.convert(local, cache_dir()))
    if local.exists():
        return str(local)
    packaged = gguf.offline_fallback(path, model_cfg.revision, model_cfg.get("offline_gguf"))
    return str(gguf.convert(packaged, cache_dir())) if packaged is not None else path


def other_model(model_cfg: Any, path: str) -> Any:
    """The model settings of another model than ``model.path`` (a judge): the preset whose
    ``path`` it is (conf/model/*.yaml, so ``HuggingFaceTB/SmolLM2-135M-Instruct`` finds its
    offline GGUF), else the defaults; only dtype, attention and trust settings come from the
    run's model. The policy's revision, GGUF file, chat template, LoRA and quantization are
    its own, not the other model's."""
    import dataclasses

    import yaml
    from omegaconf import OmegaConf

    from alignlab.config import ModelConfig, conf_dir

    spec = {f.name: getattr(ModelConfig(), f.name) for f in dataclasses.fields(ModelConfig)}
    for key in ("dtype", "trust_remote_code", "allow_pickle", "attn_implementation"):
        spec[key] = model_cfg[key]
    for preset in sorted((conf_dir() / "model").glob("*.yaml")):
        values = yaml.safe_load(preset.read_text()) or {}
        if values.get("path") == path:
            spec.update({k: v for k, v in values.items() if k in spec and k != "train_args"})
    spec.update(name=spec.get("name") or "other", path=path, lora=False, from_sft=False,
                quantization=None)
    return OmegaConf.create(spec)


def _load_kwargs(model_cfg: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": bool(model_cfg.trust_remote_code)}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if not model_cfg.allow_pickle:
        kwargs["use_safetensors"] = True
    return kwargs


def _hub_error(path: str, err: Exception, adapter: Path | None = None) -> AlignlabError:
    """The AlignlabError for a model ``path`` that transformers could not load; ``adapter``:
    the LoRA adapter folder whose base ``path`` is."""
    text = str(err)
    if "safetensors" in text.lower() or "use_safetensors" in text:
        return AlignlabError(f"'{path}' has no safetensors weights, only pickle files, which can "
                             "run code when loaded. Convert them, or set model.allow_pickle=true "
                             "if you trust the source.")
    first = " ".join(text.splitlines()[0].split()) if text.strip() else repr(err)
    if adapter is not None:
        return AlignlabError(
            f"The LoRA adapter '{adapter}' names its base model base_model_name_or_path='{path}' "
            f"in adapter_config.json, and that model could not be loaded ({first}). Get the base "
            f"model onto this machine (e.g. `hf download {path} --local-dir DIR` where the Hub is "
            "reachable) and set base_model_name_or_path in "
            f"'{adapter / 'adapter_config.json'}' to its folder.")
    if Path(path).expanduser().is_dir():
        return AlignlabError(f"Could not load the model folder '{path}': {first}. Check that it "
                             "is a complete save_pretrained folder (config.json, safetensors "
                             "weights, tokenizer), or copy it again from where it came from.")
    return AlignlabError(f"Could not load '{path}': {first}. "
                         "This machine may not reach the Hugging Face Hub: download the model "
                         "and set model.path to the local folder.")


# The JSON files of a model or adapter folder that transformers and peft parse.
_JSON_FILES = ("config.json", "adapter_config.json", "generation_config.json",
               "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def _read_json(file: Path) -> Any:
    """``file`` parsed; a file that is not JSON is refused, naming the line and column."""
    import json

    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"it is not UTF-8 text (byte {err.start + 1})"
    except json.JSONDecodeError as err:
        problem = f"line {err.lineno}, column {err.colno}: {err.msg}"
    raise AlignlabError(f"'{file}' is not valid JSON ({problem}). Fix that line, or copy the "
                        "file again from where the model came from (its hub repository or the "
                        "run that saved it).")


def check_json_files(path: str | Path) -> None:
    """A local model folder's config/tokenizer JSON files parse (transformers would report a
    broken config.json as a file it could not find or fetch)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        for name in _JSON_FILES:
            if (folder / name).is_file():
                _read_json(folder / name)


def adapter_folder(path: str) -> Path | None:
    """``path`` itself when it is a local LoRA adapter folder (``adapter_config.json``, e.g.
    the ``model/`` of a ``model.lora=true`` run), else None."""
    folder = Path(path).expanduser()
    return folder if (folder / "adapter_config.json").is_file() else None


def adapter_base(folder: Path) -> str:
    """The base model of the adapter in ``folder``: its ``base_model_name_or_path``.

    An adapter trained on a built-in model names that model's cache folder; when the folder is
    gone (cache cleared, another machine or ``ALIGNLAB_CACHE``) it is rebuilt from its name and
    seed, if the package's assets still give the same model.
    """
    import re

    config_file = folder / "adapter_config.json"
    spec = _read_json(config_file)
    base = spec.get("base_model_name_or_path") if isinstance(spec, dict) else None
    if not base:
        raise AlignlabError(f"The LoRA adapter '{folder}' does not name its base model "
                            f"(base_model_name_or_path in {config_file}). Set it to the base "
                            "model's folder or hub id.")
    local = Path(base).expanduser()
    if local.exists() and local.resolve() == folder.resolve():
        raise AlignlabError(f"The LoRA adapter '{folder}' names itself as its base model. Set "
                            f"base_model_name_or_path in {config_file} to the base model's "
                            "folder or hub id.")
    if local.exists():
        return str(local)
    built = re.fullmatch(r"(?P<name>.+)-seed(?P<seed>\d+)-[0-9a-f]{10}", local.name)
    if built and (ASSETS / built["name"] / "config.json").exists():
        rebuilt = build_builtin(built["name"], int(built["seed"]))
        if rebuilt.name != local.name:
            raise AlignlabError(f"The LoRA adapter '{folder}' was trained on an older built-in "
                                f"{built['name']} ({local.name}); this version builds "
                                f"{rebuilt.name}. Retrain the adapter.")
        return str(rebuilt)
    if runs.looks_local(str(base)):
        raise AlignlabError(
            f"The LoRA adapter '{folder}' names its base model base_model_name_or_path='{base}' "
            "in adapter_config.json, and that folder does not exist on this machine. Set "
            f"base_model_name_or_path in {config_file} to where the base model is here (its "
            "folder, or its hub id).")
    return base


def load_tokenizer(model_cfg: Any, path: str) -> Any:
    """The tokenizer, with a pad token and (optionally) the configured chat template."""
    from transformers import AutoTokenizer

    adapter = adapter_folder(path)
    base_of = None
    if adapter is not None and not (adapter / "tokenizer_config.json").exists():
        path, base_of = adapter_base(adapter), adapter  # an adapter saved without its tokenizer
    check_json_files(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                            revision=model_cfg.revision)
    except (OSError, ValueError) as err:
        raise _hub_error(path, err, base_of) from None
    if model_cfg.chat_template:
        template = Path(model_cfg.chat_template)
        tok.chat_template = template.read_text() if template.exists() else model_cfg.chat_template
    if tok.chat_template is None:
        raise AlignlabError(f"The tokenizer of '{path}' has no chat template. Set "
                            "model.chat_template to a Jinja template (text or file).")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(name: str) -> Any:
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def quantization_config(model_cfg: Any, hardware: Any) -> Any:
    """A bitsandbytes config for 4-bit NF4 or 8-bit loading, or None."""
    quant = model_cfg.quantization
    if not quant:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if hardware.device == "cuda" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def load_model(model_cfg: Any, path: str, hardware: Any, *, kind: str = "causal-lm",
               base_of: Path | None = None) -> Any:
    """A causal LM (``kind="causal-lm"``) or a one-logit reward model (``kind="reward"``).

    A LoRA adapter folder loads as its base with the adapter merged in: the model it was
    trained into (e.g. the SFT model), which a new LoRA or the PPO reference then starts from.
    ``base_of``: the adapter folder whose base ``path`` is (for the error message).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    adapter = adapter_folder(path)
    if adapter is not None:  # its base may be an adapter folder too: they merge in order
        import logging

        base = adapter_base(adapter)
        model = load_model(model_cfg, base, hardware, kind=kind, base_of=adapter)
        logging.getLogger("alignlab").info("%s is a LoRA adapter: merged it into its base %s",
                                           adapter, base)
        return merge_adapter(model, adapter, kind)
    check_json_files(path)
    kwargs = _load_kwargs(model_cfg)
    dtype = hardware.model.get("dtype") or model_cfg.dtype
    kwargs["dtype"] = torch_dtype(dtype)
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    quant = quantization_config(model_cfg, hardware)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": _local_device(hardware)}
    try:
        if kind == "reward":
            import torch

            # A causal LM has no score head: the new one is drawn from a fixed seed, so the same
            # command trains the same reward model (it drew from an unseeded RNG before).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                                           **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error(path, err, base_of) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def merge_adapter(model: Any, folder: Path, kind: str = "causal-lm") -> Any:
    """``model`` (the adapter's base) with the LoRA adapter in ``folder`` merged into it.

    Merged, not attached: a new LoRA (``get_peft_model``) would otherwise replace the adapter
    and start from the base, and so would a reference taken as "the base with adapters off".
    """
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(folder))
    if config.task_type != {"causal-lm": "CAUSAL_LM", "reward": "SEQ_CLS"}.get(kind):
        # e.g. a reward model from a LoRA SFT run: only the adapted layers carry over; the
        # task-specific peft class would expect the other head
        config.task_type = None
    merged = PeftModel.from_pretrained(model, str(folder), config=config).merge_and_unload()
    # Named after the adapter: an adapter trained on top of this model records it as its base,
    # so loading that one merges this one first instead of starting from the bare base.
    merged.name_or_path = merged.config._name_or_path = str(folder.resolve())
    return merged


def _local_device(hardware: Any) -> Any:
    if hardware.device == "cuda":
        return int(os.environ.get("LOCAL_RANK", 0))
    return "cpu"


def lora_config(model_cfg: Any, task_type: str = "CAUSAL_LM") -> Any:
    """A peft LoraConfig when ``model.lora`` is enabled, else None."""
    lora = normalize_lora(to_plain(model_cfg.lora))
    if not lora.pop("enabled"):
        return None
    from peft import LoraConfig

    r, alpha, dropout = lora.pop("r"), lora.pop("alpha"), lora.pop("dropout")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type=task_type, **lora)


def load_policy(cfg: Any) -> tuple[Any, Any, Any]:
    """The starting policy, its tokenizer and its frozen reference.

    The reference is loaded explicitly (``method.reference``, else the same weights as the
    policy): left to itself TRL rebuilds it from ``config._name_or_path``, which is not always
    the policy being trained. With LoRA the reference is None: TRL disables the adapters instead,
    so no second copy of the weights is held.
    """
    path = resolve_path(cfg.model, cfg.seed)
    tokenizer = load_tokenizer(cfg.model, path)
    policy = load_model(cfg.model, path, cfg.hardware)
    reference = None
    if cfg.method.reference or lora_config(cfg.model) is None:
        ref_path = str(Path(cfg.method.reference).expanduser()) if cfg.method.reference \
            else path
        reference = load_model(cfg.model, ref_path, cfg.hardware)
        reference.eval().requires_grad_(False)
    return policy, tokenizer, reference
