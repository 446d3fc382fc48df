"""Dataset presets: hub datasets and local files, converted to TRL's conversational formats.

Every loaded dataset ends up in one of four *kinds* (the columns TRL's trainers read):

- ``sft``      -> ``messages``: a conversation (system/user/assistant) ending with an assistant
  turn;
- ``pairs``    -> ``prompt`` (ends with a user turn), ``chosen``, ``rejected`` (one assistant
  message each): TRL's explicit-prompt conversational preference format;
- ``unpaired`` -> ``prompt``, ``completion`` (one assistant message), ``label`` (bool): KTO's
  format;
- ``prompts``  -> ``prompt`` (ends with a user turn): for PPO/GRPO/RLOO/CAI generation.

``data.format`` says how the source is laid out (see :data:`FORMATS`): ``hh-rlhf`` (Anthropic's
"\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts), ``ultrafeedback`` and ``cai`` (the H4
datasets), or ``trl`` (any file already in a TRL format, conversational or plain strings).
Malformed rows (no assistant reply, empty reply, identical chosen and rejected, ...) are dropped
and counted in a warning; an empty result is an error.

This module picks the splits and ties the parts together: the row converters and the table of
formats are :mod:`alignlab.data.convert`, opening and checking what ``data.path`` names is
:mod:`alignlab.data.files`. Importing them is cheap: ``datasets`` is imported only when
something is loaded.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from alignlab.data.convert import (
    FORMATS,
    KINDS,
    MissingSplit,
    Row,
    SkipRow,
    map_columns,
    setting,
)
from alignlab.data.files import check_config, check_files, open_source
from alignlab.errors import AlignlabError, did_you_mean

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "KINDS", "MissingSplit", "check_config", "check_files", "load_preset"]

TEST_FRACTION = 0.05  # share of the train split carved off when a dataset has no test split
_told_carves: set[tuple[str, str, str]] = set()  # (data, kind, split): test carving already said

def _choose(names: Sequence[str], explicit: str | None, candidates: Sequence[str], key: str,
            label: str) -> str | None:
    if explicit is not None:
        if explicit in names:
            return explicit
        raise AlignlabError(
            f"Split '{explicit}' is not in dataset '{label}' (available: {', '.join(names)}). "
            f"Set data.{key} to one of the available splits.{did_you_mean(explicit, names)}")
    return next((c for c in candidates if c in names), None)


def _carve(n: int, seed: int, part: str) -> list[int]:
    """The row indices of ``part`` ("train" or "test") of a seeded TEST_FRACTION split, by
    datasets' own ``train_test_split``. It is run over the row numbers, not the rows: on a
    dataset read from files it writes index files beside them even with keep_in_memory (and
    then refuses the two together), and a save_to_disk folder is the user's."""
    import datasets

    n_test = max(1, round(n * TEST_FRACTION)) if n > 1 else 0
    if not n_test:
        return list(range(n)) if part == "train" else []
    numbers = datasets.Dataset.from_dict({"row": list(range(n))})
    return sorted(numbers.train_test_split(test_size=n_test, seed=seed)[part]["row"])


def _features(kind: str) -> datasets.Features:
    import datasets

    msgs = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    cols = {"sft": ("messages",), "pairs": ("prompt", "chosen", "rejected"),
            "unpaired": ("prompt", "completion"), "prompts": ("prompt",)}[kind]
    feats = dict.fromkeys(cols, msgs)
    if kind == "unpaired":
        feats["label"] = datasets.Value("bool")
    return datasets.Features(feats)


def _iter_rows(ds: datasets.Dataset, batch_size: int = 1000) -> Iterable[dict[str, Any]]:
    """Rows as dicts, read a batch at a time (row-by-row access is several times slower)."""
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(keys, values, strict=True))


# Columns of the user's data kept beside a kind's own, as strings (``data.columns`` maps other
# names to them, e.g. RewardBench's subset to category): evaluation reports per category, and
# over-refusal needs each prompt's safe/unsafe mark.
PASSTHROUGH = ("category", "safety")


def _to_dataset(rows: list[Row], kind: str, extra: Sequence[str] = ()) -> datasets.Dataset:
    """The converted rows as a Dataset, built column-wise in Arrow (from_list encodes row by row,
    which dominated loading time on hh-rlhf)."""
    import datasets
    import pyarrow as pa

    features = _features(kind)
    for name in extra:
        features[name] = datasets.Value("string")
    schema = features.arrow_schema
    columns = {name: pa.array([r[name] for r in rows], type=schema.field(name).type)
               for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def _positive_int(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1:
        raise AlignlabError(f"data.max_samples is {value!r}. Set it to a positive number of "
                            "rows, or null for all rows.")
    return n


def load_preset(data: Mapping[str, Any], kind: str, split: str = "train") -> datasets.Dataset:
    """Load the dataset described by ``data`` for ``split`` ("train" or "test") as ``kind`` rows.

    ``data`` is the Hydra ``data`` group (name, format, path, subset, data_dir, train_split,
    test_split, max_samples, seed; any may be None; format None means "trl"). ``path`` is a
    local .json/.jsonl/.parquet file, a folder of them (hub repo layout, data_dir honoured), a
    save_to_disk folder, or a hub id. Splits default per format and kind (e.g.
    train_prefs/test_prefs for ultrafeedback pairs); a dataset without a test split gets a seeded
    5 % of its train split carved off (train then excludes those rows). ``max_samples`` caps the
    rows of either split after a seeded shuffle. Raises AlignlabError for user mistakes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    fmt = setting(data, "format") or "trl"  # unset format: files already in a TRL format
    if fmt not in FORMATS:
        raise AlignlabError(f"Unknown data.format '{fmt}'. Set data.format to one of the "
                            f"presets.{did_you_mean(str(fmt), FORMATS)}")
    preset = FORMATS[fmt]
    seed = int(setting(data, "seed") or 0)
    max_samples = setting(data, "max_samples")
    if max_samples is not None:
        max_samples = _positive_int(max_samples)

    source = open_source(setting(data, "path"), setting(data, "subset"), setting(data, "data_dir"))
    train_cands, test_cands = preset.splits[kind]
    train_name = _choose(source.splits, setting(data, "train_split"), train_cands, "train_split",
                         source.label)
    test_name = _choose(source.splits, setting(data, "test_split"), test_cands, "test_split",
                        source.label)
    # "all": every row of the train split, none held out (evaluating a benchmark file)
    carve = (test_name is None or test_name == train_name) and split != "all"
    if split == "test" and not carve:
        name = test_name
    elif train_name is not None:
        name = train_name
    else:
        raise MissingSplit(
            f"Dataset '{source.label}' has no train split for kind '{kind}' (looked for "
            f"{', '.join(train_cands)}; available: {', '.join(source.splits) or 'none'}). "
            "Set data.train_split to the split to train on.")

    raw = source.load(name)
    where = f"'{source.label}' split '{name}'"
    raw = map_columns(raw, setting(data, "columns") or {}, where)
    convert = preset.plan(raw.features, kind, fmt, where)  # checks columns before reading rows
    indices: list[int] | None = None
    if carve:
        indices = _carve(len(raw), seed, "test" if split == "test" else "train")
        if (source.label, kind, name) not in _told_carves:  # once, not per split loaded
            _told_carves.add((source.label, kind, name))
            log.info("%s has no %s split for '%s'; using a seeded %d%% of '%s' as test.",
                     source.label, "separate test" if test_name else "test", kind,
                     round(TEST_FRACTION * 100), name)
    if max_samples is not None:
        indices = list(range(len(raw))) if indices is None else indices
        random.Random(seed).shuffle(indices)
    rows_in = _iter_rows(raw if indices is None else raw.select(indices, keep_in_memory=True))
    extra = [c for c in PASSTHROUGH if c in raw.column_names]

    rows: list[Row] = []
    dropped: Counter[str] = Counter()
    seen = 0
    for row in rows_in:
        if max_samples is not None and len(rows) >= max_samples:
            break
        seen += 1
        try:
            converted = convert(row)
        except SkipRow as why:
            dropped[str(why)] += 1
            continue
        for out in converted:
            out.update({c: None if row[c] is None else str(row[c]) for c in extra})
        rows.extend(converted)
    if max_samples is not None:
        rows = rows[:max_samples]  # unpaired rows come two per pair

    where += f" ({split} part)" if carve else ""
    reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common())
    if dropped:
        log.warning("Dropped %d of %d rows of %s for kind '%s': %s.", sum(dropped.values()), seen,
                    where, kind, reasons)
    if not rows:
        detail = f"all {seen} rows were dropped: {reasons}" if seen else "it has no rows"
        raise AlignlabError(
            f"Dataset {where} has no usable rows for kind '{kind}' ({detail}). Point data.path "
            f"at a non-empty dataset in the '{fmt}' format ({preset.description}), or fix "
            "data.format.")
    return _to_dataset(rows, kind, extra)
