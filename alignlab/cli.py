"""``python -m alignlab``: parse, validate, dispatch to one stage, write the run directory.

Config errors are found before Hydra creates a run directory and before torch, transformers or
trl are imported, so ``--help``, ``--cfg job`` and mistakes answer in well under a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
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


# Free-form mappings: their keys are validated by alignlab (against TRL's dataclasses, peft's
# LoraConfig...), so a new key needs no Hydra ``+`` prefix, as users of TRL's CLI expect.
_OPEN_MAPPINGS = re.compile(r"^(method\.args|hardware\.args|model\.train_args|model\.lora|"
                            r"constitution|inputs|stages\.[^.=]+\.(args|data|model))\.[^=]+=|"
                            r"^data\.columns(\.[^=]+)?=")  # a whole {read name: file column} too


def open_mapping_overrides(argv: list[str]) -> list[str]:
    """``method.args.beta=0.05`` -> ``++method.args.beta=0.05`` (add or override)."""
    return lora_overrides([f"++{a}" if _OPEN_MAPPINGS.match(a) else a for a in argv])


_LORA_SWITCH = re.compile(r"^\+{0,2}model\.lora(\.enabled)?=(.*)$")
_LORA_KEY = re.compile(r"^\+{0,2}model\.lora\.(?!enabled=)[^=]+=")
_SWITCH_VALUES = {"true": "true", "false": "false", "null": "false", "none": "false"}


def lora_overrides(argv: list[str]) -> list[str]:
    """Make every spelling of LoRA mean what it says, in any order.

    ``model.lora=true`` would replace the mapping of settings by a bool (dropping an earlier
    ``model.lora.r=8``), and a later ``model.lora.r=8`` would replace the bool by ``{r: 8}``;
    so the switch becomes ``model.lora.enabled``. Setting any other key under ``model.lora``
    turns LoRA on unless the command says ``model.lora=false`` or ``model.lora.enabled=false``.
    """
    out, explicit, keys = [], False, False
    for arg in argv:
        switch = _LORA_SWITCH.match(arg)
        values = switch and [v.strip().lower() for v in switch.group(2).split(",")]
        if switch and values and all(v in _SWITCH_VALUES for v in values):
            explicit = True
            arg = "++model.lora.enabled=" + ",".join(_SWITCH_VALUES[v] for v in values)
        elif switch and switch.group(1):
            explicit = True
        elif (switch and switch.group(2).lstrip().startswith("{")) or _LORA_KEY.match(arg):
            keys = True  # a key, or a whole mapping ``model.lora={r:8}``
        out.append(arg)
    if keys and not explicit:
        out.append("++model.lora.enabled=true")
    return out


def _check_group_choices(overrides: list[str]) -> None:
    """``method=dpoo`` -> a message naming the nearest real option."""
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if sep and key in config.GROUPS:
            options = config.group_options(key)
            if value not in options:
                raise AlignlabError(f"'{key}={value}' is not a {key} preset."
                                    f"{did_you_mean(value, options)}")


_KEY_ERR = re.compile(r"Key '([^']+)' (?:is )?not in (?:struct|'(\w+)')")
_OVERRIDE = re.compile(r"Could not override '([^']+)'")


def _explain(err: Exception) -> AlignlabError:
    """Turn a Hydra/OmegaConf composition error into one clear sentence plus a fix."""
    text = runs.redact(str(err))  # Hydra's messages may quote resolved environment values
    key = _OVERRIDE.search(text)
    missing = _KEY_ERR.search(text)
    if key:
        full = key.group(1)
        parent, _, leaf = full.rpartition(".")
        valid = config.schema_keys(parent)
        hint = did_you_mean(leaf, valid) if valid else ""
        return AlignlabError(f"'{full}' is not a config key.{hint} "
                             "Run `python -m alignlab --cfg job` to see every key.")
    if missing:
        return AlignlabError(f"'{missing.group(1)}' is not a config key. Run `python -m alignlab "
                             "--cfg job` to see every key.")
    first = text.strip().splitlines()[0] if text.strip() else repr(err)
    cause = err.__cause__
    if text.startswith("Error merging override") and cause is not None and str(cause).strip():
        first += ": " + " ".join(runs.redact(str(cause)).strip().splitlines()[0].split())
    return AlignlabError(f"Bad configuration: {first}. Check the override's spelling and "
                         "value, or run `python -m alignlab --cfg job`.")


def compose(overrides: list[str]) -> Any:
    """Compose and validate the config for ``overrides``; raise AlignlabError on a mistake."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config.register()
    overrides = open_mapping_overrides(overrides)
    _check_group_choices(overrides)
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
    from omegaconf import OmegaConf

    runs.refuse_secrets(OmegaConf.to_container(cfg, resolve=False))
    try:
        validation.validate(cfg)
        if cfg.recipe.name:
            pipeline.check(cfg)
    except OSError as err:  # e.g. a path longer than the filesystem allows
        raise _path_error(err) from None
    return cfg


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
    """``hardware.omp_wait_policy`` into the environment, before torch (and OpenMP) loads; the
    launched processes inherit it. The user's own OMP_WAIT_POLICY is left as it is."""
    policy = hardware.get("omp_wait_policy")
    if policy and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = str(policy).upper()


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
    if not flags & (_FLAGS_WITHOUT_RUN | _MULTIRUN):
        try:
            cfg = compose(_overrides(argv))
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
            planned = planned_run_dir(_overrides(argv))
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
