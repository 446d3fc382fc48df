"""Run directories: resolved config, metrics, completion markers and checkpoints.

Only the main process writes here; every file is written to a temporary name and renamed, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError

MARKER = "DONE"
LOCK = ".alignlab.lock"
REDACTED = "<redacted>"
# Test hooks, read from the environment by the stages that honour them.
KILL_ENV = "ALIGNLAB_KILL_AFTER_STEP"
KILL_IN_SAVE_ENV = "ALIGNLAB_TEST_KILL_IN_SAVE"  # die with the final save half done
RANK_CHECK_ENV = "ALIGNLAB_RANK_CHECK"  # every rank writes a hash of its weights
# Keys that hold a credential: api_key, password, secret, and the tokens that authenticate
# (hub_token, hf_token, access_token ...). Not pad_token/eos_token (special tokens of a
# tokenizer), max_new_tokens, or api_key_env (which only names an environment variable).
_SECRET_KEY = re.compile(
    r"^(?:\w+_)?(?:api_?key|access_?key|secret(?:_key)?|password|passwd|credentials?)$"
    r"|^(?:(?:hub|hf|huggingface|access|auth|api|bearer|refresh|session|push_to_hub|wandb|"
    r"github|gh|openai)_)?token$", re.IGNORECASE)
# Values that look like credentials whatever their key: Hugging Face, OpenAI/Anthropic-style,
# GitHub and AWS access keys; not inside a longer word (a path such as ``.../task-...``).
_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{32,}"
                           r"|ghp_[A-Za-z0-9]{30,}|github_pat_\w{30,}|AKIA[0-9A-Z]{16})")


# Suffixes of files that are paths whatever their slashes (data files, compressed, GGUF).
LOCAL_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst",
                  ".bz2", ".xz", ".zip", ".gguf", ".yaml", ".yml"}


def looks_local(path: str) -> bool:
    """A file-system path rather than a hub id (``org/name`` or ``name``) or ``builtin:``:
    absolute, relative or home-based, two or more slashes (``runs/sft/model``), a backslash,
    or a file suffix. Whether it exists is not looked at."""
    if path.startswith("builtin:"):
        return False
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path \
        or bool(set(Path(path).suffixes) & LOCAL_SUFFIXES)


def is_main_process() -> bool:
    """True on rank 0 (or when not launched distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def kill_after_step(method: str) -> int | None:
    """Test hook: ``ALIGNLAB_KILL_AFTER_STEP=N`` (or ``<method>:N`` to hit one stage of a
    recipe) ends the process with exit code 75 after update N, once any checkpoint due at N is
    on disk, as a real kill would at that moment."""
    value = os.environ.get(KILL_ENV, "")
    target, _, step = value.rpartition(":")
    if not step or (target and target != method):
        return None
    return int(step)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def is_secret_key(key: str) -> bool:
    """Whether a config key names a credential (``hub_token``, ``api_key``, ``password``)."""
    return bool(_SECRET_KEY.match(str(key).rsplit(".", 1)[-1]))


def redact(obj: Any) -> Any:
    """Drop secrets (credentials by key, credential-looking strings by value) from a config
    before it is saved or logged; everything else is kept so the config reproduces the run."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return _SECRET_VALUE.sub(REDACTED, obj)
    return obj


def find_secrets(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``obj`` (a nested dict/list) that hold a credential."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            where = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(k) and v not in (None, "", "null"):
                found.append(where)
            else:
                found += find_secrets(v, where)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += find_secrets(v, f"{prefix}[{i}]")
    elif isinstance(obj, str) and _SECRET_VALUE.search(obj):
        found.append(prefix or obj[:3] + "...")
    return found


def refuse_secrets(obj: Any) -> None:
    """Raise AlignlabError if ``obj`` (a config, or overrides as {key: value}) holds a secret.

    Hydra saves the overrides and the composed config in ``.hydra/``, and the trainer pickles
    its arguments into ``training_args.bin``, so a secret in the config would reach disk
    verbatim; secrets come from the environment instead.
    """
    found = find_secrets(obj)
    if found:
        raise AlignlabError(
            f"'{found[0]}' holds a secret, which would be saved in the run directory. Pass "
            "tokens through the HF_TOKEN environment variable (API keys: the variable named "
            "by method.args.api_key_env), never as an override or in a config file.")


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_config(run_dir: Path, cfg: Any) -> None:
    """Save the resolved config (secrets redacted) as ``config.yaml``."""
    from omegaconf import OmegaConf

    container = redact(OmegaConf.to_container(cfg, resolve=True))
    atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(container)))


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/checkpoint-N`` folder, if any."""
    ckpts = [p for p in (run_dir / "checkpoints").glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def mark_done(run_dir: Path, info: dict[str, Any]) -> None:
    """Leave the completion marker next to the stage's artifact."""
    write_json(run_dir / MARKER, info)


def is_done(run_dir: Path) -> bool:
    return (run_dir / MARKER).exists()


# Open lock files of the run directories this process holds, by path: held until it exits.
_HELD: dict[str, int] = {}
# Run directories this process created (resolved paths): the only ones it may remove.
_CREATED: set[str] = set()


def lock_run_dir(run_dir: Path) -> None:
    """Take an exclusive lock on ``run_dir`` for the rest of this process's life.

    A second alignlab run on the same directory (the same ``hydra.run.dir``, or a recipe
    re-run while the first is running) is refused with one clear line instead of clobbering
    the first one's files. The kernel drops the lock when the process ends, killed or not.
    Only the main process locks: the ranks of one launch share the directory.
    """
    import errno
    import fcntl

    key = str(Path(run_dir).resolve())
    if key in _HELD or not is_main_process():
        return
    try:
        note_created(Path(run_dir))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise AlignlabError(f"Cannot use run directory {run_dir}: {err.strerror}. Choose "
                            "another one with hydra.run.dir=...") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            # A filesystem without locks (some network mounts): run unlocked, as before.
            os.close(fd)
            _HELD[key] = -1
            return
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlignlabError(
            f"Run directory {run_dir} is in use by another alignlab run (pid {holder}). Wait "
            "for it to finish, or choose another directory with hydra.run.dir=...") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd


def created_here(run_dir: Path) -> bool:
    """Whether this process created ``run_dir`` (:func:`lock_run_dir` found no folder there).

    Only such a folder may be removed when the run fails: a folder that existed before (the
    working directory, a user's project, an earlier run) is never removed or emptied.
    """
    return str(Path(run_dir).resolve()) in _CREATED


def note_created(run_dir: Path) -> None:
    """Record that this process is about to create ``run_dir`` (it does not exist yet)."""
    if not Path(run_dir).exists():
        _CREATED.add(str(Path(run_dir).resolve()))


# ---------------------------------------------------------------------------------------------
# SIGTERM / SIGINT: a training loop that can stop cleanly asks for the signal to be turned into
# a request (it saves a checkpoint at the end of the step and returns); anywhere else the
# signal interrupts at once (KeyboardInterrupt), as Python's default for SIGINT does.


class Interrupted(Exception):
    """The run was stopped by a signal; ``checkpoint`` is where ``resume=true`` continues."""

    def __init__(self, signame: str, checkpoint: Path | None = None) -> None:
        super().__init__(signame)
        self.signame, self.checkpoint = signame, checkpoint


_STOP: dict[str, Any] = {"signal": None, "listening": 0}


def stop_requested() -> str | None:
    """The name of the signal that asked the running loop to stop (None: keep going)."""
    return _STOP["signal"]


def on_signal(signum: int, frame: Any) -> None:
    """Signal handler: a stoppable loop gets a request; otherwise (or on a second signal)
    the process is interrupted at once."""
    import signal

    name = signal.Signals(signum).name
    if _STOP["listening"] and _STOP["signal"] is None:
        _STOP["signal"] = name
        print(f"\n[alignlab] {name}: stopping after this step (saving a checkpoint); send it "
              "again to stop at once", flush=True)
        return
    _STOP["signal"] = _STOP["signal"] or name
    raise KeyboardInterrupt(name)


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set :func:`stop_requested` instead of interrupting."""
    _STOP["listening"] += 1
    try:
        yield
    finally:
        _STOP["listening"] -= 1


def partial_dir(final: Path) -> Path:
    """Where a folder is written before :func:`commit_dir` moves it to ``final``."""
    return final.with_name(f".{final.name}.partial")


def fresh_partial_dir(final: Path) -> Path:
    """An empty :func:`partial_dir` for ``final`` (whatever a killed save left is dropped)."""
    tmp = partial_dir(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Move the completely written folder ``tmp`` to ``final``, replacing an older one.

    Files are flushed to disk first and the move is a rename, so a kill at any moment leaves
    either the old folder, no folder, or the whole new one at ``final``, never a half-written
    one (a half-written save stays at its ``.partial`` name).
    """
    for path in tmp.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
