"""What every trainer-backed stage shares: its TRL config, resume, the saved model, metrics."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignlab import console, runs
from alignlab.config import dataclass_fields
from alignlab.errors import AlignlabError
from alignlab.runs import KILL_IN_SAVE_ENV, RANK_CHECK_ENV, kill_after_step

log = logging.getLogger("alignlab")


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process, and peak GPU memory allocated when on CUDA."""
    import resource

    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def write_rank_fingerprint(model: Any, run_dir: Path, rank: int, world: int) -> None:
    """``run_dir/ranks/rank-<i>.json``: world size and a hash of this rank's parameters, so a
    test can prove DDP kept every replica identical."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    runs.write_json(run_dir / "ranks" / f"rank-{rank}.json",
                    {"rank": rank, "world_size": world, "params_sha256": digest.hexdigest()})


def _callbacks(method: str) -> list[Any]:
    from transformers import TrainerCallback

    class LogToFile(TrainerCallback):
        """Mirror the trainer's full logs into the run's log file (Hydra's ``<job>.log``); the
        console gets the short line of :func:`console_progress` instead."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                log.info("step %d: %s", state.global_step, logs, extra={console.FILE_ONLY: True})

    class KillAfterStep(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step >= self.step and not control.should_save:
                os._exit(75)

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step >= self.step:
                os._exit(75)

    step = kill_after_step(method)
    return [LogToFile()] + ([KillAfterStep(step)] if step is not None else [])


def _guard() -> Any:
    """A callback that ends training cleanly on a stop signal (with a checkpoint of the step
    just done) or as soon as a logged loss or gradient norm is not finite."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        bad: tuple[str, float, int] | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if runs.stop_requested():
                control.should_save = True  # whatever save_strategy says: resume from here
                control.should_training_stop = True

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            for key, value in (logs or {}).items():
                if key in ("loss", "grad_norm") and not is_finite(value):
                    self.bad = self.bad or (key, value, state.global_step)
                    control.should_training_stop = True

    return Guard()


def is_finite(value: Any) -> bool:
    """Whether a logged number (float, int or 0-d tensor) is finite; non-numbers count as finite."""
    import math

    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def diverged(what: str, value: Any, step: int) -> AlignlabError:
    """Training turned non-finite: nothing is saved as done, and the message says what to try."""
    return AlignlabError(
        f"Training diverged: {what} became {value} at step {step}, so no model was saved and the "
        "run is not marked done. Lower method.args.learning_rate (or beta, or set "
        "method.args.max_grad_norm=1.0) and run again.")


def check_finite_weights(model: Any, step: int) -> None:
    """Refuse to save a model with a NaN or infinite trainable weight (raises AlignlabError)."""
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad:
            local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP shard
            if not bool(torch.isfinite(local.detach()).all()):
                raise diverged(f"the weight {name}", "non-finite", step)


_CPU_SAFE = {"use_cpu": True, "bf16": False, "fp16": False}


def _rejected(what: str, err: Exception) -> AlignlabError:
    text = " ".join(str(err).split())  # one line, whatever the library printed
    return AlignlabError(f"{what} rejected the configuration: {text} Fix the value in "
                         "method.args (or the model/hardware preset).")


@contextlib.contextmanager
def setup_errors(what: str) -> Iterator[None]:
    """Report a ValueError raised while ``what`` (a trainer) is built as a config mistake.

    TRL and transformers check their arguments and the model/data combination with ValueError
    while a trainer is set up; that is a value the user can fix, so it becomes one clear line
    (exit code 2). Errors once training runs are crashes, reported with their traceback.
    """
    try:
        yield
    except ValueError as err:
        raise _rejected(what, err) from err


def merged_args(cfg: Any, args_class: str) -> dict[str, Any]:
    """Trainer arguments: model.train_args < hardware.args < method.args (later wins).

    Model and hardware suggestions that the trainer's config lacks are skipped (a preset's
    ``max_length`` means nothing to a trainer without one); ``method.args`` were validated.
    """
    fields = dataclass_fields(args_class)
    by_model = OmegaConf.to_container(cfg.model.train_args, resolve=True) or {}
    merged: dict[str, Any] = {}
    for source in (by_model.get("default", {}), by_model.get(cfg.method.name, {}),
                   OmegaConf.to_container(cfg.hardware.args, resolve=True)):
        merged.update({k: v for k, v in (source or {}).items() if k in fields})
    if cfg.hardware.device == "cpu":  # whatever a GPU preset said: no bf16 autocast on a CPU
        merged.update({k: v for k, v in _CPU_SAFE.items() if k in fields})
    merged.update(OmegaConf.to_container(cfg.method.args, resolve=True))
    return _current_names(merged, fields)


# transformers 5 renamed these (the old names still work, with a FutureWarning on every run).
# The hardware presets use the old names, which alignlab's own PPOConfig keeps.
_RENAMED = {"gradient_checkpointing": "activation_checkpointing",
            "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def _current_names(args: dict[str, Any], fields: Any) -> dict[str, Any]:
    """Pass renamed arguments under the name the trainer's config knows today."""
    for old, new in _RENAMED.items():
        if old in args and new in fields and new not in args:
            args[new] = args.pop(old)
    return args


def trainer_config(cfg: Any, args_class: str, run_dir: Path, **fixed: Any) -> Any:
    """Instantiate the trainer's config dataclass (e.g. trl.DPOConfig) for this run."""
    module, _, name = args_class.partition(":")
    cls = getattr(importlib.import_module(module), name)
    args = {"output_dir": str(run_dir / "checkpoints"), "seed": cfg.seed,
            "report_to": cfg.report_to,
            "disable_tqdm": bool(cfg.get("quiet", False)), **merged_args(cfg, args_class),
            **fixed}
    if args.get("report_to") in (None, "none"):
        args["report_to"] = "none"
    if "tensorboard" in str(args["report_to"]):  # event files beside the run's other logs
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        text = " ".join(str(err).split())  # one line, whatever the dataclass printed
        raise AlignlabError(f"Invalid method.args for {name}: {text} Fix the value in "
                            "method.args (or the model/hardware preset).") from None


def train(trainer: Any, cfg: Any, run_dir: Path,
          step_keys: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Run ``trainer`` (resuming from the last checkpoint when ``resume=true``) and save it.

    Returns the metrics written to ``metrics.json``: final train metrics and the log history.
    ``step_keys``: what the console line of a trainer log shows (the method's row).
    """
    checkpoint = runs.last_checkpoint(run_dir) if cfg.resume else None
    if checkpoint is not None:
        console.note(f"[alignlab] resuming from {checkpoint}")
    for callback in _callbacks(cfg.method.name):
        trainer.add_callback(callback)
    console_progress(trainer, step_keys)
    from transformers import TrainerCallback

    class TrainBegun(TrainerCallback):
        """Records that set-up is over: the first step is next."""

        started = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = True

    begun, guard = TrainBegun(), _guard()
    trainer.add_callback(begun)
    trainer.add_callback(guard)
    start = time.time()
    try:
        with runs.stoppable():  # SIGTERM/SIGINT end the step, save a checkpoint and return
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint
                                   else None)
    except ValueError as err:
        # Before the first step the trainer builds its dataloader and optimizer, which reject
        # values (a batch size, a learning rate) with ValueError: a config mistake, not a crash.
        if begun.started:
            raise
        raise _rejected(type(trainer).__name__, err) from err
    if runs.stop_requested():
        raise runs.Interrupted(runs.stop_requested() or "SIGTERM",
                               runs.last_checkpoint(run_dir))
    if guard.bad is not None:
        raise diverged(*guard.bad)
    check_finite_weights(trainer.model, trainer.state.global_step)
    out = run_dir / "model"
    # Written under a temporary name and renamed when complete: a kill mid-save leaves no
    # half model at model/ (and no DONE, which run_stage writes after this returns).
    tmp = runs.partial_dir(out)
    if runs.is_main_process():
        runs.fresh_partial_dir(out)
    trainer.accelerator.wait_for_everyone()
    if os.environ.get(KILL_IN_SAVE_ENV):
        _kill_in_save(trainer)
    trainer.save_model(str(tmp))  # safetensors + tokenizer; adapters only when LoRA
    trainer.accelerator.wait_for_everyone()
    world = trainer.accelerator.num_processes
    metrics = {"method": cfg.method.name, "train": dict(result.metrics),
               "log_history": trainer.state.log_history, "world_size": world,
               "wall_seconds": round(time.time() - start, 2)}
    metrics.update(peak_memory())
    if os.environ.get(RANK_CHECK_ENV):
        write_rank_fingerprint(trainer.model, run_dir, trainer.accelerator.process_index, world)
    if runs.is_main_process():
        runs.commit_dir(tmp, out)
    trainer.accelerator.wait_for_everyone()
    return metrics


def _kill_in_save(trainer: Any) -> None:
    """Test hook: end the process (exit code 75) once the final save has written the weights
    but not the tokenizer, as a kill in the middle of writing the model would."""

    def die(*args: Any, **kwargs: Any) -> None:
        os._exit(75)

    trainer.processing_class.save_pretrained = die


def console_progress(trainer: Any, step_keys: Sequence[tuple[str, str]] | None = None) -> None:
    """One progress bar and one short line per logging step on the console.

    The Trainer's own progress callback prints every log dict under the bar, which repeated
    what the log file gets (two lines per step, at full precision); ``-q`` (``disable_tqdm``)
    made it a PrinterCallback that prints them all. ``hydra.verbose`` keeps TRL's printing.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if console.is_verbose():
        return

    class StepLines(ProgressCallback):
        """TRL/transformers' bar, with :func:`console.step_line` instead of the log dict."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                console.bar_note(self.training_bar, console.step_line(
                    state.global_step, state.max_steps, logs, step_keys))

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(StepLines())

