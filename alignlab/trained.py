"""What a finished run made, found from any path a user may give, and loaded for inference.

``export`` and ``chat`` take "a run directory or a model folder": a run dir (``<dir>/model``),
a recipe's stage (``<recipe dir>/<stage>``), a model folder (weights or a LoRA adapter) or a GGUF
file. :func:`locate` turns any of them into a :class:`Trained`; :func:`load` gives the model
(an adapter merged into its base) and its tokenizer; :func:`start_of` the model the run began
from (for side-by-side answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab import gguf, models, runs
from alignlab.errors import AlignlabError

_MARK = "ALIGNLAB-CHAT-MARK"  # rendered as an assistant reply to find the end-of-turn token


@dataclass(frozen=True)
class Trained:
    """A model to ship or to talk to."""

    model_dir: Path  # weights (config.json) or a LoRA adapter (adapter_config.json)
    run_dir: Path | None  # the run that made it, when there is one
    base: str | None = None  # an adapter's base model (folder or hub id)

    @property
    def is_adapter(self) -> bool:
        return self.base is not None

    @property
    def name(self) -> str:
        where = self.run_dir or self.model_dir
        return where.name if where.name != "model" else where.parent.name


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def locate(path: str | Path) -> Trained:
    """The model behind ``path`` (run dir, recipe stage, model folder or GGUF file)."""
    given = Path(path).expanduser()
    if given.exists():
        given = given.resolve()  # `export .` inside a model folder has a name too
    if not given.exists():
        raise AlignlabError(f"'{path}' does not exist. Give a run directory (with model/), a "
                            "recipe's stage (<recipe dir>/<stage>), a model folder or a GGUF file.")
    if given.is_file():
        if not gguf.is_gguf(given):
            raise AlignlabError(f"'{path}' is a file but not a GGUF model. Give a run directory, "
                                "a model folder or a .gguf file.")
        return Trained(gguf.convert(given, models.cache_dir()), None)
    if (given / "model").is_dir():
        if not runs.is_done(given):
            raise AlignlabError(f"The run '{given}' is not finished (no DONE marker), so its "
                                "model/ may be incomplete. Finish it first (resume=true).")
        return _with_base(given / "model", given)
    if _is_model_folder(given):
        run = given.parent if given.name == "model" and runs.is_done(given.parent) else None
        return _with_base(given, run)
    stages = sorted(p.name for p in given.iterdir() if p.is_dir() and (p / "model").is_dir())
    if stages:
        raise AlignlabError(f"'{given}' is a recipe run; name one of its stages: "
                            + ", ".join(str(given / s) for s in stages) + ".")
    raise AlignlabError(f"'{given}' holds no model (no model/, config.json or "
                        "adapter_config.json). Give a finished run directory or a model folder.")


def _with_base(folder: Path, run_dir: Path | None) -> Trained:
    models.check_json_files(folder)
    adapter = models.adapter_folder(str(folder))
    return Trained(folder, run_dir, models.adapter_base(adapter) if adapter else None)


def run_config(trained: Trained) -> Any | None:
    """The run's resolved config (``config.yaml``), or None for a bare model folder."""
    if trained.run_dir is None or not (trained.run_dir / "config.yaml").is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.load(trained.run_dir / "config.yaml")


def start_of(trained: Trained) -> Trained:
    """The model the run started from (its ``model.path``), as a :class:`Trained`."""
    cfg = run_config(trained)
    if cfg is None:
        if trained.base is not None:  # an adapter's start is its base
            return _with_base(Path(trained.base), None) if Path(trained.base).exists() \
                else Trained(Path(trained.base), None)
        raise AlignlabError(f"'{trained.model_dir}' is not inside a run directory, so its "
                            "starting model is unknown. Name the model to compare with.")
    start = models.resolve_path(cfg.model, int(cfg.seed))
    return locate(start) if Path(start).exists() else Trained(Path(start), None)


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The special token the chat template writes after an assistant's reply (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``...), or {} when there is none."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}],
            tokenize=False)
    except Exception:  # templates raise what they like (jinja2's TemplateError, ValueError...)
        return set()
    if _MARK not in text:
        return set()
    after = tokenizer(text.split(_MARK, 1)[1], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    return {after[0]} if after and after[0] in special else set()


def loading_config(t: Trained) -> tuple[Any, Any]:
    """(model, hardware) settings to load ``t`` with: the run's own ``model`` group (revision,
    trust_remote_code, allow_pickle, chat_template), in float32 on the CPU, never quantised."""
    from omegaconf import OmegaConf

    from alignlab import config

    model_cfg = OmegaConf.structured(config.ModelConfig)
    cfg = run_config(t)
    if cfg is not None and cfg.get("model") is not None:
        model_cfg = OmegaConf.merge(model_cfg, cfg.model)
    model_cfg.dtype, model_cfg.quantization, model_cfg.attn_implementation = \
        "float32", None, None
    hardware = OmegaConf.structured(config.HardwareConfig)
    return model_cfg, hardware


def load(t: Trained, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on the CPU, float32; LoRA adapters merged into their
    bases in order (an adapter whose base is an adapter, as a LoRA DPO after a LoRA SFT)."""
    model_cfg, hardware = loading_config(t)
    model_cfg.dtype = dtype
    tokenizer = models.load_tokenizer(model_cfg, str(t.model_dir))
    model = models.load_model(model_cfg, str(t.model_dir), hardware)
    model.eval().requires_grad_(False)
    return model, tokenizer


def load_unmerged(t: Trained) -> Any:
    """An adapter model as training left it: its (merged) base with the adapter on top,
    unmerged (what the merged folder must reproduce)."""
    from peft import PeftModel

    model_cfg, hardware = loading_config(t)
    base = models.load_model(model_cfg, str(t.base), hardware, base_of=t.model_dir)
    return PeftModel.from_pretrained(base, str(t.model_dir)).eval()
