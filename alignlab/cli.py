"""``python -m alignlab``: parse, validate, dispatch to one stage, write the run directory.

Config errors are found before Hydra creates a run directory and before torch, transformers or
trl are imported, so ``--help``, ``--cfg job`` and mistakes answer in well under a second.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from alignlab import checks, config, console, launch, pipeline, runs, stage, toy_start, validation
from alignlab.errors import AlignlabError, did_you_mean
from alignlab.report import render_report

log = logging.getLogger("alignlab")

_FLAGS_WITHOUT_RUN = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion",
                      "-sc", "--version"}
_MULTIRUN = {"--multirun", "-m"}
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path",
                     "-cp", "--config-dir", "-cd", "--experimental-rerun"}


def fail(err: AlignlabError) -> None:
    """Print one clear message (no traceback) and exit with code 2."""
    print(f"alignlab: error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)


def _overrides(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _FLAGS_WITH_VALUE:
            skip = True
            continue
        if not arg.startswith("-"):
            out.append(arg)
    return out


@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parsed(arg: str) -> Any:
    """Hydra's own reading of a command-line override (its key, ``+``/``++``/``~`` type and
    value), or None for a flag, a flag's value, or text Hydra's grammar rejects (Hydra says
    why when it composes)."""
    if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
        return None
    try:
        return _parser().parse_override(arg)
    except Exception:  # OverrideParseException and the grammar's own
        return None


# Free-form mappings: their keys are validated by alignlab (against TRL's dataclasses, peft's
# LoraConfig...), so a new key needs no Hydra ``+`` prefix, as users of TRL's CLI expect.
_OPEN_MAPPINGS = ("method.args", "hardware.args", "model.train_args", "model.lora",
                  "constitution", "inputs")
_STAGE_MAPPINGS = ("args", "data", "model")  # stages.<name>.<these>.<key>


def _in_open_mapping(key: str) -> bool:
    parts = key.split(".")
    return key.startswith(tuple(f"{m}." for m in _OPEN_MAPPINGS)) \
        or (len(parts) > 3 and parts[0] == "stages" and parts[2] in _STAGE_MAPPINGS) \
        or parts[:2] == ["data", "columns"]  # a whole {read name: file column} too


def open_mapping_overrides(argv: list[str]) -> list[str]:
    """``method.args.beta=0.05`` -> ``++method.args.beta=0.05`` (add or override)."""
    out = []
    for arg in argv:
        o = parsed(arg)
        plain = o is not None and o.type.name == "CHANGE" and o.package is None
        out.append(f"++{arg}" if plain and _in_open_mapping(o.key_or_group) else arg)
    return lora_overrides(out)


# model.lora's switch values, as Hydra reads them, to model.lora.enabled's.
_SWITCH_VALUES = {True: "true", False: "false", None: "false", "none": "false"}


def _switch(value: Any) -> str | None:
    key = value.lower() if isinstance(value, str) else value
    return _SWITCH_VALUES.get(key) if isinstance(key, bool | str | type(None)) else None


def lora_overrides(argv: list[str]) -> list[str]:
    """Make every spelling of LoRA mean what it says, in any order.

    ``model.lora=true`` would replace the mapping of settings by a bool (dropping an earlier
    ``model.lora.r=8``), and a later ``model.lora.r=8`` would replace the bool by ``{r: 8}``;
    so the switch becomes ``model.lora.enabled``. Setting any other key under ``model.lora``
    turns LoRA on unless the command says ``model.lora=false`` or ``model.lora.enabled=false``.
    """
    out, explicit, keys = [], False, False
    for arg in argv:
        o = parsed(arg)
        key = o.key_or_group if o is not None and not o.is_delete() and o.package is None \
            else None
        if key in ("model.lora", "model.lora.enabled"):
            value = o.value()
            values = value.list if o.is_sweep_override() and hasattr(value, "list") else [value]
            switch = [_switch(v) for v in values]
            if all(v is not None for v in switch):
                explicit = True
                arg = "++model.lora.enabled=" + ",".join(switch)  # type: ignore[arg-type]
            elif key == "model.lora.enabled":
                explicit = True
            elif isinstance(value, dict):
                keys = True  # a whole mapping ``model.lora={r:8}``
        elif key is not None and key.startswith("model.lora."):
            keys = True
        out.append(arg)
    if keys and not explicit:
        out.append("++model.lora.enabled=true")
    return out


def _check_group_choices(overrides: list[str]) -> None:
    """``method=dpoo`` -> a message naming the nearest real option."""
    for item in overrides:
        o = parsed(item)
        if o is None or o.is_delete() or o.key_or_group not in config.GROUPS \
                or o.is_sweep_override():
            continue
        value, options = o.value(), config.group_options(o.key_or_group)
        if str(value) not in options:
            raise AlignlabError(f"'{o.key_or_group}={value}' is not a {o.key_or_group} preset."
                                f"{did_you_mean(str(value), options)}")


def _missing_key(err: BaseException) -> str | None:
    """The full key of the OmegaConf key error behind a Hydra composition error, if any."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConfigAttributeError | ConfigKeyError) and seen.full_key:
            return str(seen.full_key)
        seen = seen.__cause__ or seen.__context__
    return None


def _explain(err: Exception) -> AlignlabError:
    """Turn a Hydra/OmegaConf composition error into one clear sentence plus a fix."""
    text = runs.redact(str(err))  # Hydra's messages may quote resolved environment values
    full = _missing_key(err)
    if full:
        parent, _, leaf = full.rpartition(".")
        valid = config.schema_keys(parent)
        hint = did_you_mean(leaf, valid) if valid else ""
        return AlignlabError(f"'{full}' is not a config key.{hint} "
                             "Run `python -m alignlab --cfg job` to see every key.")
    first = text.strip().splitlines()[0] if text.strip() else repr(err)
    cause = err.__cause__
    if text.startswith("Error merging override") and cause is not None and str(cause).strip():
        first += ": " + " ".join(runs.redact(str(cause)).strip().splitlines()[0].split())
    return AlignlabError(f"Bad configuration: {first}. Check the override's spelling and "
                         "value, or run `python -m alignlab --cfg job`.")


# The configs this process has validated (their YAML, unresolved): a job runs the checks only
# when main did not already run them on the same config (a sweep's member, composed again by
# Hydra's sweeper, is the same config).
_VALIDATED: set[str] = set()


def _key(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def _checked(cfg: Any) -> Any:
    """Refuse secrets in ``cfg`` and validate it (the recipe's links too); returns it."""
    from omegaconf import OmegaConf

    runs.refuse_secrets(OmegaConf.to_container(cfg, resolve=False))
    try:
        validation.validate(cfg)
        if cfg.recipe.name:
            pipeline.check(cfg)
    except OSError as err:  # e.g. a path longer than the filesystem allows
        raise _path_error(err) from None
    _VALIDATED.add(_key(cfg))
    return cfg


def _prepared(overrides: list[str]) -> list[str]:
    config.register()
    overrides = open_mapping_overrides(overrides)
    _check_group_choices(overrides)
    return overrides


def compose(overrides: list[str]) -> Any:
    """Compose and validate the config for ``overrides``; raise AlignlabError on a mistake."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = _prepared(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config.conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except AlignlabError:
        raise
    except Exception as err:  # Hydra and OmegaConf raise many types; all mean a bad config
        raise _explain(err) from None
    finally:
        GlobalHydra.instance().clear()
    return _checked(cfg)


@dataclass
class Composed:
    """A plain run's config, composed once as ``hydra.main`` would (``full``: with its
    ``hydra`` node, which names the run directory), and validated (``job``: without it)."""

    app: Any  # Hydra's application object, whose config loader composed it
    full: Any
    job: Any

    @property
    def run_dir(self) -> Path | None:
        """``hydra.run.dir`` resolved (the resolvers cache: the job gets the same); None when
        it resolves only inside Hydra's job (e.g. ``${hydra:job.name}`` in it)."""
        from omegaconf import OmegaConf

        try:
            return Path(OmegaConf.select(self.full, "hydra.run.dir"))
        except Exception:  # OmegaConf's interpolation errors; _task locks the dir then
            return None


def compose_run(overrides: list[str]) -> Composed:
    """:func:`compose` for a plain run (no Hydra flag): the one composition the run uses."""
    import copy

    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    overrides = _prepared(overrides)
    GlobalHydra.instance().clear()
    try:
        app = Hydra.create_main_hydra2(
            task_name="cli", config_search_path=create_config_search_path(str(config.conf_dir())))
        full = app.compose_config("config", [*overrides, "hydra.mode=RUN"], RunMode.RUN)
    except AlignlabError:
        raise
    except Exception as err:  # Hydra and OmegaConf raise many types; all mean a bad config
        GlobalHydra.instance().clear()
        raise _explain(err) from None
    job = copy.deepcopy(full)
    with read_write(job), open_dict(job):
        del job["hydra"]  # what run_job hands the task
    return Composed(app, full, _checked(job))


def run_composed(composed: Composed) -> None:
    """Run :func:`_task` on the config composed by :func:`compose_run`, as ``hydra.main``'s
    run would (run directory, ``.hydra/``, logging, callbacks), without composing it again."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    full = composed.full
    try:
        configure_log(full.hydra.hydra_logging, full.hydra.verbose)
        callbacks = Callbacks(full)
        callbacks.on_run_start(config=full, config_name="config")
        done = run_job(hydra_context=HydraContext(config_loader=composed.app.config_loader,
                                                  callbacks=callbacks),
                       task_function=_task, config=full, job_dir_key="hydra.run.dir",
                       job_subdir_key=None, configure_logging=True)
        callbacks.on_run_end(config=full, config_name="config", job_return=done)
        _ = done.return_value  # raises what the job raised
    finally:
        GlobalHydra.instance().clear()


def _path_error(err: OSError) -> AlignlabError:
    """A path in the config that the operating system refuses, as one line with the fix."""
    name = str(err.filename or "")
    shown = name if len(name) <= 80 else f"{name[:40]}...{name[-30:]} ({len(name)} characters)"
    return AlignlabError(f"Cannot use the path '{shown}': {err.strerror or err}. Use a shorter "
                         "or existing path (a folder name is at most 255 characters).")


def planned_run_dir(overrides: list[str]) -> Path | None:
    """The run directory Hydra will create for ``overrides`` (``hydra.run.dir``, resolved);
    None when it resolves only inside Hydra's job (e.g. ``${hydra:job.name}`` in it)."""
    return _planned_hydra_dir(overrides, "hydra.run.dir")


def _planned_hydra_dir(overrides: list[str], key: str) -> Path | None:
    """``key`` (``hydra.run.dir`` or ``hydra.sweep.dir``) as Hydra will resolve it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config.conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=open_mapping_overrides(overrides),
                                return_hydra_config=True)
        return Path(OmegaConf.select(cfg, key))
    except Exception:  # Hydra and OmegaConf raise many types; _task locks the dir then
        return None
    finally:
        GlobalHydra.instance().clear()


def _override_values(overrides: list[str]) -> dict[str, str]:
    """``["++method.args.beta=0.1", ...]`` -> ``{"method.args.beta": "0.1", ...}``."""
    pairs = (item.lstrip("+~").partition("=") for item in overrides)
    return {key: value for key, sep, value in pairs if sep}


def apply_threading(hardware: Any) -> None:
    """``hardware.omp_wait_policy`` (and, with the passive policy, ``omp_spin_count``) into
    the environment, before torch (and OpenMP) loads; the launched processes inherit them.
    The user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is (and a user's own
    OMP_WAIT_POLICY=PASSIVE gets no spin count from alignlab)."""
    policy = hardware.get("omp_wait_policy")
    if not policy or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = str(policy).upper()
    spins = hardware.get("omp_spin_count")
    if policy == "passive" and spins is not None and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(spins)


def _task(cfg: Any) -> None:
    """One Hydra job: one stage, written into Hydra's run directory."""
    apply_threading(cfg.hardware)  # a sweep's job (main applied it for a single run)
    run_dir = Path(cfg.run_dir)
    try:  # before anything is removed on failure: the directory may be another run's
        runs.lock_run_dir(run_dir)
        if not cfg.recipe.name:  # a sweep's member, checked here (main checked a single run)
            refuse_finished(cfg, run_dir)
    except AlignlabError as err:
        fail(err)
    console.setup(cfg.quiet, verbose=_hydra_verbose())
    for sig in (signal.SIGTERM, signal.SIGINT):  # SLURM preemption, Ctrl-C
        signal.signal(sig, runs.on_signal)
    try:
        if _key(cfg) not in _VALIDATED:  # main validated a plain run's config already
            validation.validate(cfg)
        config.apply_hardware(cfg)
        if cfg.overwrite and not cfg.recipe.name and runs.is_main_process():
            with contextlib.suppress(FileNotFoundError):  # the old run is no longer done
                (run_dir / runs.MARKER).unlink()
        if cfg.recipe.name:
            metrics = pipeline.run(cfg, run_dir, render=_render)
            if runs.is_main_process():
                write_report(run_dir)
        else:  # run_stage rendered the run's report
            metrics = run_stage(cfg, run_dir)
    except AlignlabError as err:
        kept = _kept_work(run_dir)
        if kept:
            err = AlignlabError(f"{err} ({kept} kept: after the fix, run the same command with "
                                "resume=true to continue)")
        else:
            _remove_unfinished(run_dir)
        fail(err)
    except (KeyboardInterrupt, runs.Interrupted) as err:
        _interrupted(err, run_dir)
    except Exception as err:  # not a mistake the user can fix: a bug, or the machine failed
        _report_crash(err, run_dir)
    name = f"recipe {cfg.recipe.name}" if cfg.recipe.name else cfg.method.name
    summary = console.summarise(metrics).line()
    console.note(f"[alignlab] {name} finished: {summary}")
    console.note(f"[alignlab] run directory: {run_dir}")


def run_stage(cfg: Any, run_dir: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """:func:`alignlab.stage.run_stage` ending with the stage's report (``report.md/html``)."""
    return stage.run_stage(cfg, run_dir, fingerprint, render=_render)


def _render(run_dir: Path) -> Path | None:
    """report.md/html of ``run_dir`` (None, with a warning, when rendering fails)."""
    try:
        return render_report(run_dir)
    except Exception as err:  # a report that fails never fails the finished run
        log.warning("could not render the report for %s: %s", run_dir, err)
        return None


def _hydra_verbose() -> bool:
    """Whether Hydra's own ``hydra.verbose`` is set (then the console shows everything)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().verbose)
    except ValueError:  # not inside a Hydra job
        return False


def write_report(run_dir: Path) -> None:
    """Render report.md/html; a report that fails never fails the finished run."""
    try:
        console.note(f"[alignlab] report: {render_report(run_dir)}")
    except Exception as err:
        log.warning("could not render the report for %s: %s", run_dir, err)


class SweepReport(Callback):
    """Hydra callback: after a ``-m`` sweep, render the sweep report (reward-vs-KL frontier)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if runs.is_main_process():
            write_report(Path(config.hydra.sweep.dir))


def _remove_unfinished(run_dir: Path) -> None:
    """A run that failed before writing anything of value leaves no directory behind.

    Only a directory that this process created is removed: one that existed before (the
    working directory, a user's folder, an earlier run) is never touched. A recipe's earlier
    stages are of value: their folders (one level down) are looked at too.
    """
    if not run_dir.is_dir() or not runs.is_main_process() or not runs.created_here(run_dir):
        return
    folders = [run_dir, *(d for d in run_dir.iterdir() if d.is_dir())]
    if not any(_of_value(d) for d in folders):
        shutil.rmtree(run_dir, ignore_errors=True)


def _of_value(folder: Path) -> bool:
    """Whether ``folder`` holds results: a model, metrics, a marker, a checkpoint or rows a
    generation stage has written (``shard-*.jsonl`` of its resumable store; the trainer creates
    an empty ``checkpoints/`` while it is set up, which is nothing to keep)."""
    model = folder / "model"
    return (model.is_dir() and any(model.iterdir())) or (folder / "metrics.json").exists() \
        or (folder / runs.MARKER).exists() or runs.last_checkpoint(folder) is not None \
        or any(p.stat().st_size > 0 for p in folder.glob("*/shard-*.jsonl"))


def _kept_work(run_dir: Path) -> str | None:
    """What an unfinished run (or a recipe's unfinished stage) saved that ``resume=true``
    continues from: its newest checkpoint, or the rows of a generation stage."""
    if not run_dir.is_dir():
        return None
    for folder in (run_dir, *sorted(d for d in run_dir.iterdir() if d.is_dir())):
        if runs.is_done(folder):
            continue  # a recipe's finished stage is skipped on the next run anyway
        ckpt = runs.last_checkpoint(folder)
        if ckpt is not None:
            return f"the checkpoint {ckpt} is"
        rows = [p for p in folder.glob("*/shard-*.jsonl") if p.stat().st_size > 0]
        if rows:
            return f"the rows written so far ({rows[0].parent}) are"
    return None


def refuse_finished(cfg: Any, run_dir: Path) -> None:
    """A finished run is never overwritten without a word: refused unless ``overwrite=true``
    (a recipe skips its finished stages, and refuses one made with another config)."""
    if cfg.recipe.name:
        pipeline.refuse_mixed(cfg, run_dir)
    elif runs.is_done(run_dir) and not cfg.overwrite:
        raise AlignlabError(f"Run directory {run_dir} holds a finished run. Choose a new "
                            "hydra.run.dir, or pass overwrite=true to replace its model and "
                            "results.")


def _interrupted(err: BaseException, run_dir: Path) -> None:
    """SIGTERM/SIGINT: one line (and the log), the checkpoint to resume from; exit 128+N."""
    name = runs.stop_requested() or (err.signame if isinstance(err, runs.Interrupted)
                                     else "SIGINT")
    kept = _kept_work(run_dir)
    if kept:
        hint = f"{kept} kept: run the same command with resume=true to continue."
    else:
        hint = "nothing was saved yet."
        _remove_unfinished(run_dir)
    log.warning("interrupted by %s; %s", name, hint, extra={console.FILE_ONLY: True})
    print(f"alignlab: interrupted by {name}; {hint}", file=sys.stderr)
    sys.exit(128 + int(getattr(signal, name, signal.SIGINT)))


def _report_crash(err: Exception, run_dir: Path) -> None:
    """A crash: the full traceback goes to the run's log file only, the console gets one line
    saying where it is, and the run directory stays as evidence. Exits with code 1."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "alignlab crashed", None,
                            sys.exc_info())
    for handler in files:  # not the console handler: the console gets one line
        handler.handle(record)
    if files:
        where = Path(files[0].baseFilename)
    else:  # Hydra's job logging turned off: write the traceback next to the run
        import traceback

        where = run_dir / "cli.log"
        with contextlib.suppress(OSError), where.open("a") as fh:
            fh.write("alignlab crashed\n" + traceback.format_exc())
    text = " ".join(str(err).split())[:300]
    kept = _kept_work(run_dir)
    resume = f"; {kept} kept: run the same command with resume=true to continue" if kept else ""
    print(f"alignlab: crashed: {type(err).__name__}: {text} -- the full traceback is in {where} "
          f"(the run directory is kept{resume}; please include that file when reporting the "
          "bug).", file=sys.stderr)
    sys.exit(1)


def _job_config_only(argv: list[str]) -> bool:
    """``--cfg job`` (or ``-c job``) and nothing that changes what Hydra would print."""
    for flag in ("--cfg", "-c"):
        at = argv.index(flag) if flag in argv else -1
        if 0 <= at < len(argv) - 1 and argv[at + 1] == "job":
            return not set(argv) & {"--package", "-p", "--resolve", "--config-name", "-cn",
                                    "--config-path", "-cp", "--config-dir", "-cd",
                                    "--experimental-rerun"}
    return False


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m alignlab`` and the ``alignlab`` command."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        if len(argv) != 2:
            fail(AlignlabError("Usage: python -m alignlab report <run, recipe or sweep dir>."))
        try:
            print(render_report(Path(argv[1])))
        except AlignlabError as err:
            fail(err)
        return
    if argv and argv[0] == "chat":
        from alignlab import chat

        sys.exit(chat.main(argv[1:]))
    if argv and argv[0] == "export":
        from alignlab import export

        sys.exit(export.main(argv[1:]))
    config.register()
    argv = open_mapping_overrides(console.quiet_flags(argv))
    flags = set(argv)
    try:  # Hydra would save them in .hydra/overrides.yaml, sweeps included
        runs.refuse_secrets(_override_values(_overrides(argv)))
        validation.check_env_credentials(_override_values(_overrides(argv)))  # hydra.* too
    except AlignlabError as err:
        fail(err)
    # A plain run (no Hydra flag) is composed and validated once, here, and run on that config.
    composed = None
    if not flags & (_FLAGS_WITHOUT_RUN | _MULTIRUN):
        try:
            if any(a.startswith("-") for a in argv):
                cfg = compose(_overrides(argv))
            else:
                composed = compose_run(argv)
                cfg = composed.job
            if os.environ.get("ALIGNLAB_CACHE"):  # built-in models and conversions go there
                checks.check_run_dir(os.environ["ALIGNLAB_CACHE"], key="ALIGNLAB_CACHE")
        except AlignlabError as err:
            fail(err)
        except OSError as err:  # a path the filesystem refuses, e.g. a name over 255 bytes
            fail(_path_error(err))
        apply_threading(cfg.hardware)
        if _job_config_only(argv):
            # What Hydra's --cfg job prints, from the config just composed and checked (Hydra
            # would compose it a second time: half the command's time).
            from omegaconf import OmegaConf

            sys.stdout.write(OmegaConf.to_yaml(cfg))
            return
        if "--cfg" not in flags and "-c" not in flags and launch.needs_launch(cfg.hardware):
            toy_start.build_before_launch(cfg)
            sys.exit(launch.relaunch(cfg.hardware, argv))
        if "--cfg" not in flags and "-c" not in flags:
            # Refused and locked before Hydra writes .hydra/ and the log: a refused run changes
            # nothing on disk, and a second run on this directory stops here. Launched ranks
            # other than 0 share the directory (no lock).
            planned = composed.run_dir if composed else planned_run_dir(_overrides(argv))
            try:
                if planned is not None:
                    checks.check_run_dir(str(planned))
                    refuse_finished(cfg, Path(os.path.abspath(planned)))
                    runs.lock_run_dir(planned)
            except AlignlabError as err:
                fail(err)
            except OSError as err:
                fail(_path_error(err))
    sweep_dir = None
    if flags & _MULTIRUN and not flags & _FLAGS_WITHOUT_RUN and not flags & {"--cfg", "-c"}:
        try:  # every member's config, before the first member trains
            sweep_dir = check_sweep(_overrides(argv))
        except AlignlabError as err:
            fail(err)
    if composed is not None:
        run_composed(composed)
        return
    sys.argv = [sys.argv[0], *argv]
    app = hydra.main(config_path=str(config.conf_dir()), config_name="config",
                     version_base=None)(_task)
    try:
        app()
    except SystemExit as done:
        if done.code not in (0, None) and sweep_dir is not None:
            _remove_unfinished(sweep_dir)  # a failed sweep leaves no folder it made in vain
        raise


def sweep_members(overrides: list[str]) -> list[list[str]]:
    """The override lists of a ``-m`` sweep's members, as Hydra's basic sweeper makes them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except Exception as err:  # Hydra's parser and sweeper raise several types; all are typos
        first = (str(err).strip().splitlines() or [repr(err)])[0]
        raise AlignlabError(f"Bad sweep override: {first}. Write a sweep as key=a,b or "
                            "key=range(1,4), and quote values holding commas.") from None
    return [list(member) for batch in batches for member in batch]


def check_sweep(overrides: list[str]) -> Path | None:
    """Compose and validate every member of a ``-m`` sweep (the first mistake is one line
    naming the member); returns the sweep directory when this process is to create it."""
    if any(o.lstrip("+~").startswith("hydra/sweeper=") for o in overrides):
        return None  # another sweeper (Optuna, ...) chooses its members as it goes
    members = sweep_members(overrides)
    for number, member in enumerate(members):
        try:
            compose(member)
        except AlignlabError as err:
            sweeping = [o for o in member if o not in overrides]
            raise AlignlabError(f"Sweep member {number} ({' '.join(sweeping) or 'all'}): "
                                f"{err}") from None
    planned = _planned_hydra_dir(overrides, "hydra.sweep.dir")
    if planned is None or planned.exists():
        return None
    runs.note_created(planned)
    return planned
