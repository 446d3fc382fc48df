"""data.columns: a local file whose columns have other names works without being rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab import cli, data
from alignlab.errors import AlignlabError
from tests.conftest import alignlab

ROWS = [{"question": f"What is {i} plus 1?", "text_correct": f"{i + 1}.",
         "text_incorrect": f"{i + 2}.", "note": "x"} for i in range(12)]


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_mapped_columns_load_as_pairs(pairs_file: Path) -> None:
    cfg = cli.compose(["data=local", f"data.path={pairs_file}", "method=dpo",
                       "data.columns={prompt: question, chosen: text_correct, "
                       "rejected: text_incorrect}"])
    ds = data.load(cfg.data, "pairs", "train")
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    row = ds[0]
    i = int(row["prompt"][0]["content"].split()[2])
    assert row["prompt"] == [{"role": "user", "content": f"What is {i} plus 1?"}]
    assert row["chosen"] == [{"role": "assistant", "content": f"{i + 1}."}]
    assert row["rejected"] == [{"role": "assistant", "content": f"{i + 2}."}]
    # the same mapping key by key, and for KTO's unpaired kind (chosen -> label True)
    cfg = cli.compose(["data=local", f"data.path={pairs_file}", "method=kto",
                       "data.columns.prompt=question", "data.columns.chosen=text_correct",
                       "data.columns.rejected=text_incorrect"])
    unpaired = data.load(cfg.data, "unpaired", "train")
    assert sorted(set(unpaired["label"])) == [False, True]


def test_unmapped_file_says_how_to_map(pairs_file: Path) -> None:
    cfg = cli.compose(["data=local", f"data.path={pairs_file}", "method=dpo"])
    with pytest.raises(AlignlabError, match=r"found: note, question, text_correct.*data\.columns"):
        data.load(cfg.data, "pairs", "train")


def test_a_mapping_to_a_missing_column_lists_the_columns(pairs_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = alignlab(f"hydra.run.dir={run}", "data=local", f"data.path={pairs_file}",
                    "method=dpo", "data.columns={chosen: good, rejected: text_incorrect}",
                    check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("alignlab: error:")]
    assert len(err) == 1 and "chosen: good" in err[0] and "question" in err[0]
    assert "Traceback" not in proc.stderr and not run.exists()
