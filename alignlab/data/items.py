"""Work items of the generation stages (CAI, the RLAIF judge): the data's rows with stable keys."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from alignlab import data
from alignlab.data.presets import MissingSplit
from alignlab.errors import AlignlabError


def prompt_items(data_cfg: Any, kind: str = "prompts", *, categories: Sequence[str] | None = None,
                 max_rows: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Work items of a generation stage: the data's train and test rows, each with a stable key.

    ``categories`` keeps rows of those categories when the data has a ``category`` column (the
    toy world); ``max_rows`` caps each split after a seeded shuffle. Keys ("train-17") are
    positions in that deterministic order, so a resumed run finds the same items.
    """
    items: list[dict[str, Any]] = []
    for split in ("train", "test"):
        try:
            ds = data.load(data_cfg, kind, split, keep_extra=True)
        except MissingSplit:
            # Labelling a test-only dataset needs no train split; without a test split either,
            # loading "test" below raises this same error.
            if split == "train":
                continue
            raise
        rows = [dict(r) for r in ds]
        if categories is not None and "category" in ds.column_names:
            rows = [r for r in rows if r["category"] in set(categories)]
            if not rows:
                raise AlignlabError(f"No {split} prompts of categories {list(categories)}. Set "
                                    "method.args.categories to some of "
                                    f"{sorted(set(ds['category']))}, or null for all.")
        if max_rows is not None and len(rows) > max_rows:
            random.Random(f"{seed}:{split}").shuffle(rows)
            rows = rows[:max_rows]
        keep = ("prompt", "chosen", "rejected", "category")
        items += [{"key": f"{split}-{i}", "split": split, **{k: r[k] for k in keep if k in r}}
                  for i, r in enumerate(rows)]
    return items
