"""Where a preference or RL method starts when the command names an untrained built-in model.

``python -m alignlab method=dpo`` names ``builtin:llama-small``: random weights, which no
preference method can align (it needs a model that already answers; the README's recipes start
from SFT). On data whose source offers it (the toy world's, ``Source.sft_start``) such a start
becomes the built-in model's toy-SFT checkpoint: the default SFT of ``python -m alignlab``,
trained once on first use and cached beside the random init, keyed by the model's assets, the
seed and the SFT config that built it. The reference (DPO, KTO, PPO, GRPO/RLOO) is the starting
policy, so it follows. Recipe stages with ``init:`` name an SFT stage already: their path is not
``builtin:``, so they are left alone.
``model.from_sft=false`` keeps the untrained start for experts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from alignlab import config, console, data, methods, models, runs
from alignlab.errors import AlignlabError

# Test hook (and for the impatient): cap the toy-SFT build at N optimizer steps. Part of the
# cache key, so a short build never stands in for the real one.
STEPS_ENV = "ALIGNLAB_TOY_SFT_MAX_STEPS"
# SFT settings that only shape other methods' data: not part of the cache key.
_NOT_SFT_DATA = ("n_pairs", "n_prompts")


def resolve_start(cfg: Any) -> None:
    """Point ``cfg.model.path`` at the toy-SFT checkpoint when that is the sensible start.

    Says so in one line, with how to start elsewhere; an untrained start that cannot be fixed
    this way (another dataset, or ``model.from_sft=false``) gets one line of warning instead.
    """
    path, method = str(cfg.model.path), cfg.method.name
    if not methods.load(method).starts_from_sft or not path.startswith("builtin:"):
        return
    name = path.split(":", 1)[1]
    if not wants_toy_sft(cfg):
        why = "as model.from_sft=false asks" if not cfg.model.get("from_sft", True) else \
            f"the toy SFT does not apply to data={cfg.data.name}"
        console.note(f"[alignlab] warning: {method} starts from the untrained built-in {name} "
                     f"(random weights; {why}): it needs a model that already answers. Start "
                     "from one with model.path=<an SFT run>/model.")
        return
    folder = toy_sft_checkpoint(cfg)
    cfg.model.path = str(folder / "model")
    console.note(f"[alignlab] {method} starts from {name}'s toy-SFT checkpoint "
                 f"({folder / 'model'}), not its untrained weights. Start elsewhere with "
                 f"model.path=<folder>, or from the untrained model with model.from_sft=false.")


def wants_toy_sft(cfg: Any) -> bool:
    """Whether ``cfg`` (one stage) starts from the toy-SFT checkpoint."""
    return methods.load(cfg.method.name).starts_from_sft \
        and str(cfg.model.path).startswith("builtin:") \
        and bool(cfg.model.get("from_sft", True)) and data.source(cfg.data).sft_start


def build_before_launch(cfg: Any) -> None:
    """A run launched on several processes: build the toy-SFT checkpoint here, in the
    launching process, before the ranks start (together they cannot build it)."""
    if not cfg.recipe.name and wants_toy_sft(cfg):
        toy_sft_checkpoint(cfg)


def sft_config(cfg: Any) -> Any:
    """The config of the toy SFT for ``cfg``'s model, data and seed: the default method=sft."""
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(cfg, resolve=False)
    for key in ("recipe", "stages", "from_stage", "inputs"):
        base.pop(key, None)
    out = OmegaConf.merge(OmegaConf.structured(config.Config), base)
    out.method = OmegaConf.merge(OmegaConf.structured(config.MethodConfig),
                                 OmegaConf.load(config.conf_dir() / "method" / "sft.yaml"))
    out.method.args.save_strategy = "no"  # a one-off build: no checkpoints to resume from
    if os.environ.get(STEPS_ENV):
        out.method.args.max_steps = int(os.environ[STEPS_ENV])
    out.model.lora = {"enabled": False}  # the full model, whatever the later method adapts
    out.model.quantization = None
    out.report_to = "none"
    out.resume = False
    out.quick_eval = True  # its eval.json says how good the start is
    return out


def cache_key(sft: Any) -> str:
    """A hash of what makes the toy SFT: model, its SFT/default trainer settings, data, method,
    seed and the hardware's trainer arguments (not paths or bookkeeping)."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(sft.model, resolve=True)
    train_args = model.pop("train_args", {}) or {}
    for key in ("lora", "from_sft", "quantization"):
        model.pop(key, None)
    data_cfg = OmegaConf.to_container(sft.data, resolve=True)
    for key in _NOT_SFT_DATA:
        data_cfg.get("toy", {}).pop(key, None)
    blob = {"model": model, "train_args": {k: train_args.get(k) for k in ("default", "sft")},
            "data": data_cfg, "method": OmegaConf.to_container(sft.method, resolve=True),
            "seed": sft.seed, "hardware_args": OmegaConf.to_container(sft.hardware.args)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()
                          ).hexdigest()[:10]


def checkpoint_dir(cfg: Any) -> Path:
    """The cache folder of ``cfg``'s toy-SFT checkpoint (a run dir: ``model/``, eval.json...)."""
    name = str(cfg.model.path).split(":", 1)[1]
    sft = sft_config(cfg)
    return models.cache_dir() / (f"{name}-seed{cfg.seed}-{models.assets_digest(name)}"
                                 f"-sft-{cache_key(sft)}")


def toy_sft_checkpoint(cfg: Any) -> Path:
    """The toy-SFT run dir for ``cfg`` (its model in ``model/``), trained on first use.

    Trained into a temporary folder and renamed when complete, so a crash never leaves half a
    checkpoint; a file lock makes a second process wait for the first instead of training too,
    and if two got past it anyway the rename lets exactly one copy win.
    """
    from filelock import FileLock

    out = checkpoint_dir(cfg)
    if runs.is_done(out):
        return out
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AlignlabError(f"{cfg.method.name} would start from the toy-SFT checkpoint of the "
                            "built-in model, which is not built yet and cannot be built by "
                            "several processes. Build it once on one process (the same command "
                            "with hardware=cpu), or set model.path=<an SFT run>/model.")
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if runs.is_done(out):
            return out
        _build(cfg, out)
    return out


def _build(cfg: Any, out: Path) -> None:
    sft = sft_config(cfg)
    steps = f" ({os.environ[STEPS_ENV]} steps, {STEPS_ENV})" if os.environ.get(STEPS_ENV) else ""
    console.note(f"[alignlab] {cfg.method.name} needs an SFT model first: training the toy SFT "
                 f"of {str(cfg.model.path).split(':', 1)[1]} once{steps} (the default "
                 f"`python -m alignlab`, about 2 min on 2 cores), cached in {out}")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    started = time.time()
    try:
        sft.run_dir = str(tmp)
        runs.write_config(tmp, sft)
        metrics = methods.load("sft").run(sft, tmp)
        runs.write_json(tmp / "metrics.json", metrics)
        runs.mark_done(tmp, {"method": "sft", "fingerprint": out.name.rsplit("-", 1)[-1]})
        try:
            tmp.rename(out)
        except OSError:  # another process finished first; its checkpoint is the same
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = console.stage_summary("toy SFT", metrics).removeprefix("[alignlab] toy SFT: ")
    console.note(f"[alignlab] toy SFT ready in {time.time() - started:.0f} s: {summary}")
