"""The resumable row store behind the generation stages (CAI, the RLAIF judge).

:func:`run_rows` applies a function to work items in chunks and appends each finished row to
JSONL shards, so an interrupted stage resumes without loss or duplicates; :func:`read_rows`
reads them back and :func:`fingerprint` names what they depend on. Standard library and tqdm
only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab import runs
from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")


def _read_shard(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSONL shard; a torn last line (the process was killed mid-write) is skipped."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                log.info("%s: ignoring an unfinished last line (it will be redone)", path.name)
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d is not valid JSON; that row will be redone", path, n)
    return rows


def read_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """Every finished row under ``folder`` (``shard-*.jsonl``), by key; the first copy wins."""
    done: dict[str, dict[str, Any]] = {}
    for shard in sorted(folder.glob("shard-*.jsonl")):
        for row in _read_shard(shard):
            done.setdefault(str(row["key"]), row)
    return done


def run_rows(items: Sequence[dict[str, Any]], work: Callable[[list[dict[str, Any]]],
                                                                list[dict[str, Any]]],
             folder: Path, *, fingerprint: str, resume: bool, chunk_size: int, desc: str,
             kill_at: int | None = None) -> list[dict[str, Any]]:
    """Apply ``work`` to ``items`` chunk by chunk, writing each finished row as it comes.

    Every item has a unique ``key``; ``work`` returns one row per item with that key. Rows go
    to a new ``shard-NNNNN.jsonl`` per process start (earlier shards are never rewritten), each
    line flushed as soon as it is written and the shard fsynced after every chunk. With
    ``resume=True`` finished keys are skipped, so a killed run loses at most the rows in flight
    and never duplicates one. ``fingerprint`` names what the rows depend on (prompts, model,
    settings): resuming with a different one is refused. Returns the rows in ``items`` order.

    ``kill_at=N`` (the test hook ``ALIGNLAB_KILL_AFTER_STEP``, read by the stage with
    :func:`alignlab.runs.kill_after_step`, as for the trainers) exits with code 75 once N rows
    of this stage are on disk.
    """
    from tqdm.auto import tqdm

    keys = [str(it["key"]) for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("item keys must be unique")
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "state.json"
    done = read_rows(folder)
    if done and not resume:
        raise AlignlabError(f"{folder} already holds {len(done)} rows of an earlier run. Set "
                            "resume=true to continue it, or choose a new hydra.run.dir.")
    if done and state.exists() \
            and json.loads(state.read_text()).get("fingerprint") != fingerprint:
        raise AlignlabError(f"The rows in {folder} were made with different prompts, model "
                            "or settings than this run. Resume with the original config, or "
                            "choose a new hydra.run.dir.")
    runs.write_json(state, {"fingerprint": fingerprint})  # atomic: never a torn state file
    wanted = set(keys)
    done = {k: v for k, v in done.items() if k in wanted}
    todo = [it for it in items if str(it["key"]) not in done]
    if done:
        log.info("%s: resuming, %d of %d rows already done", desc, len(done), len(items))
    written = len(done)
    number = len(list(folder.glob("shard-*.jsonl")))
    while True:  # a shard of its own, also when another process shares the folder (a cache)
        shard = folder / f"shard-{number:05d}.jsonl"
        try:
            out = shard.open("x", encoding="utf-8")
            break
        except FileExistsError:
            number += 1
    new: dict[str, dict[str, Any]] = {}
    start, last_log = time.time(), time.time()
    bar = tqdm(total=len(items), initial=len(done), unit="row", desc=desc, smoothing=0.1,
               dynamic_ncols=True)
    try:
        with out as fh:
            for c in range(0, len(todo), chunk_size):
                for row in work(list(todo[c:c + chunk_size])):
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()
                    new[str(row["key"])] = row
                    written += 1
                    bar.update(1)
                    if kill_at is not None and written >= kill_at:
                        os.fsync(fh.fileno())
                        os._exit(75)
                os.fsync(fh.fileno())
                if time.time() - last_log > 30:  # the log file gets progress too, not just tqdm
                    last_log = time.time()
                    rate = len(new) / max(1e-9, last_log - start)
                    log.info("%s: %d/%d rows (%.2f rows/s, ETA %.0f s)", desc, written,
                             len(items), rate, (len(items) - written) / max(rate, 1e-9))
    finally:
        bar.close()
    if not new and shard.exists() and shard.stat().st_size == 0:
        shard.unlink()  # a resume that had nothing left to do leaves no empty shard
    rows = {**done, **new}
    return [rows[k] for k in keys]


def fingerprint(*parts: Any) -> str:
    """A short hash of what a stage's rows depend on (for refusing a mismatched resume)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
