"""Wrong diagnoses a user met: each bad input must be named for what it is, with the fix.

The table runs ``python -m alignlab ...`` as a user types it, in a fresh process each: exit code
2, one ``alignlab: error:`` line on stderr, no traceback, the diagnosis (not the misleading one
these cases used to get), and no run directory left behind. None of them trains.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, alignlab, one_error_line
from tests.test_bad_inputs import _files, _write

TURN = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
ROW = json.dumps({"messages": TURN})
ROWS = "".join(f'{{"messages": [{{"role": "user", "content": "question {i}"}}, {{"role": '
               f'"assistant", "content": "answer {i}"}}]}}\n' for i in range(300))
SFT_LOCAL = ["data=local", "method.args.max_steps=1"]  # max_steps: a wrongly accepted case is short


def _half(blob: bytes) -> bytes:
    return blob[:len(blob) // 2]


def _gguf(keep: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A small valid llama GGUF (two tensors), cut by ``keep`` as an interrupted download is."""
    def make(tmp: Path) -> None:
        gguf = pytest.importorskip("gguf")
        import numpy as np

        full = tmp / "full.gguf"
        writer = gguf.GGUFWriter(str(full), "llama")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
        writer.add_tensor("output.weight", np.ones((64, 16), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        (tmp / "m.gguf").write_bytes(keep(full.read_bytes()))
    return make


def _adapter(base: str) -> Callable[[Path], None]:
    """A LoRA adapter folder (as peft saves it, without a tokenizer) naming ``base``."""
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "task_type": "CAUSAL_LM",
              "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    return _files(_write("adapter/adapter_config.json", json.dumps(config, indent=2)),
                 _write("adapter/adapter_model.safetensors", b"\0" * 8))


# A model folder that passes the up-front checks (config.json, weights, tokenizer), whose
# config.json is broken on line 3 (a missing comma).
BROKEN_CONFIG = _files(
    _write("m/config.json", '{\n  "model_type": "llama",\n  "hidden_size": 64\n'
                            '  "num_hidden_layers": 2\n}\n'),
    _write("m/model.safetensors", b"\0" * 8), _write("m/tokenizer.json", "{}"))
CSV = "prompt,completion\nhi,hello\nho,there\n"

# (case id, arguments, files to create, the diagnosis the message must contain); ``{tmp}`` in
# the arguments is the test's tmp_path.
Case = tuple[str, list[str], Callable[[Path], None], str]
CASES: list[Case] = [
    # was: "not UTF-8 text ... convert from latin1"
    ("gzip-truncated", [*SFT_LOCAL, "data.path={tmp}/d.jsonl.gz"],
     _write("d.jsonl.gz", _half(gzip.compress(ROWS.encode()))), "truncated or corrupt gzip"),
    ("gzip-not-gzip", [*SFT_LOCAL, "data.path={tmp}/d.jsonl.gz"],
     _write("d.jsonl.gz", ROWS), "truncated or corrupt gzip"),
    # was: a bare "Could not read", or "not UTF-8" for the compressed bytes
    ("gzip-bad-line", [*SFT_LOCAL, "data.path={tmp}/d.jsonl.gz"],
     _write("d.jsonl.gz", gzip.compress(f"{ROW}\n{ROW}\n{{oops\n".encode())),
     "line 3 is not valid JSON"),
    # was: "... is not a valid JSON file." blamed on the Hugging Face Hub
    ("model-config-json-broken", ["model.path={tmp}/m"], BROKEN_CONFIG,
     "config.json' is not valid JSON (line 4, column 3"),
    # was: "Use a GGUF of an architecture transformers supports"
    ("gguf-truncated-data", ["model.path={tmp}/m.gguf"], _gguf(_half),
     "is truncated or corrupt: it has"),
    # was: "alignlab: crashed: error: unpack_from requires a buffer ..." (exit 1)
    ("gguf-truncated-header", ["model.path={tmp}/m.gguf"], _gguf(lambda b: b[:40]),
     "end inside its header"),
    # was: "Could not load '/nonexistent/...': Repo id must be ..." (the Hub blamed)
    ("lora-base-folder-missing", ["model.path={tmp}/adapter"],
     _adapter("/nonexistent/llama-base"),
     "base_model_name_or_path='/nonexistent/llama-base' in adapter_config.json, and that "
     "folder does not exist"),
    # was: "Could not load 'someorg/llama-base': ... set model.path to the local folder"
    ("lora-base-hub-unreachable", ["model.path={tmp}/adapter"], _adapter("someorg/llama-base"),
     "set base_model_name_or_path in"),
    # was: trained on the CSV (a .csv named directly is refused)
    ("data-folder-only-csv", [*SFT_LOCAL, "data.path={tmp}/dir"], _write("dir/train.csv", CSV),
     "train.csv' has an unsupported type '.csv'. Use a .json, .jsonl or .parquet file"),
    # was: two stderr lines (datasets' own log line first), neither with a line number
    ("jsonl-line-not-an-object", [*SFT_LOCAL, "data.path={tmp}/d.jsonl"],
     _write("d.jsonl", f"{ROW}\n{ROW}\n[1, 2]\n"), "line 3 is a JSON array, not an object"),
    ("json-a-number", [*SFT_LOCAL, "data.path={tmp}/d.json"], _write("d.json", "5\n"),
     "line 1 is a JSON number"),
    # was: "Could not read ... TypeError: 'int' object is not iterable"
    ("json-list-with-a-non-row", [*SFT_LOCAL, "data.path={tmp}/d.json"],
     _write("d.json", f"[{ROW},\n {ROW},\n 7]\n"), "line 3 holds a JSON number"),
    # was: "line 1 is not valid JSON" (the object is fine there; line 3 lacks a comma)
    ("json-object-over-lines", [*SFT_LOCAL, "data.path={tmp}/d.json"],
     _write("d.json", '{"messages": [\n {"role": "user", "content": "hi"},\n'
                      ' {"role": "assistant" "content": "x"}]}\n'),
     "is not valid JSON: line 3, column 23"),
]


@pytest.mark.parametrize(("args", "files", "expect"),
                         [pytest.param(a, f, e, id=i) for i, a, f, e in CASES])
def test_diagnosis_is_one_clear_line(tmp_path: Path, args: list[str],
                                     files: Callable[[Path], None], expect: str) -> None:
    files(tmp_path)
    run_dir = tmp_path / "run-out"
    proc = alignlab(f"hydra.run.dir={run_dir}", *(a.format(tmp=tmp_path) for a in args),
                    env={"ALIGNLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
                    check=False, timeout=300)
    line = one_error_line(proc)
    assert expect in line, line
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# A data folder with a .csv beside the files alignlab reads: one warning names it, and the
# JSON Lines are what loads even where the CSV files outnumber them (datasets would pick CSV).


def test_folder_names_the_csv_it_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from alignlab.data.presets import load_preset

    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "train.jsonl").write_text(ROWS)
    for name in ("a.csv", "b.csv"):
        (folder / name).write_text(CSV)
    data = {"format": "trl", "path": str(folder), "seed": 0}
    with caplog.at_level(logging.WARNING, logger="alignlab.data.presets"):
        rows = load_preset(data, "sft", "train")
        load_preset(data, "sft", "test")
    skips = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert len(skips) == 1 and "a.csv, b.csv" in skips[0] and str(folder) in skips[0]
    assert len(rows) == 285  # the 300 JSON Lines rows less the 5 % carved off as test


# ---------------------------------------------------------------------------------------------
# A file too large to parse up front fails inside datasets: still one located message, and
# datasets' own log line about it stays off the console.


def test_file_parsed_by_datasets_is_located(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    from alignlab.data import files, presets
    from alignlab.errors import AlignlabError

    monkeypatch.setattr(files, "PARSE_UP_FRONT_BYTES", 0)  # as if the file were huge
    path = tmp_path / "d.jsonl"
    path.write_text(f"{ROW}\n{ROW}\n\"a string\"\n")
    with pytest.raises(AlignlabError, match=r"d\.jsonl': line 3 is a JSON string"):
        presets.load_preset({"format": "trl", "path": str(path)}, "sft", "train")
    assert "Failed to load JSON" not in capfd.readouterr().err + caplog.text


# ---------------------------------------------------------------------------------------------
# The recipe report with a broken recipe.yaml: the stage folders, never Hydra's .hydra/.


def test_recipe_report_with_broken_recipe_yaml_lists_only_stages(tmp_path: Path) -> None:
    root = tmp_path / "recipe"
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text("seed: 42\n")
    (root / ".hydra" / "overrides.yaml").write_text("- recipe=dpo\n")
    (root / "recipe.yaml").write_text("name: dpo\nstages: [sft, dpo\n")  # unclosed
    (root / "config.yaml").write_text("recipe:\n  name: dpo\n  stages: [sft, dpo, eval]\n")
    for name, method in (("dpo", "dpo"), ("sft", "sft")):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(f"method:\n  name: {method}\n")
        (root / name / "metrics.json").write_text(json.dumps({"train": {"train_loss": 1.0}}))
    proc = subprocess.run([sys.executable, "-m", "alignlab", "report", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    md = (root / "report.md").read_text()
    stages = [ln.split("|")[1].strip() for ln in md.splitlines()
              if ln.startswith("| ") and not ln.startswith(("| stage", "|---"))]
    assert stages == ["sft", "dpo"]  # in the recipe's order, from its config.yaml
    assert ".hydra" not in md and not (root / ".hydra" / "report.md").exists()
    assert "recipe.yaml is not valid YAML" in md and "line 3, column 1" in md
