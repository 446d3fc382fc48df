"""Dataset presets: each hub layout (reproduced by a small fixture) and local TRL files."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from alignlab.data.presets import FORMATS, KINDS, load_preset
from alignlab.errors import AlignlabError

FIX = Path(__file__).parent / "fixtures" / "data"
TRL = FIX / "trl"
CONF = Path(__file__).parents[1] / "alignlab" / "conf" / "data"


@pytest.fixture(autouse=True)
def _offline_and_isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub access (the flags are read at import, so patch them too) and a private cache."""
    import datasets
    import huggingface_hub.constants

    cache = tmp_path_factory.getbasetemp() / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def cfg(path: Any, fmt: str | None = "trl", **kw: Any) -> dict[str, Any]:
    """A data-group mapping with every key, like the Hydra config."""
    base = {"name": "test", "format": fmt, "path": None if path is None else str(path),
            "subset": None, "data_dir": None, "train_split": None, "test_split": None,
            "max_samples": None, "seed": 42}
    return base | kw


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def roles(messages: list[dict[str, str]]) -> list[str]:
    return [m["role"] for m in messages]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def check_kind(ds: Any, kind: str) -> None:
    """Every row has exactly the TRL columns of ``kind`` with the documented shapes."""
    expected = {"sft": ["messages"], "pairs": ["prompt", "chosen", "rejected"],
                "unpaired": ["prompt", "completion", "label"], "prompts": ["prompt"]}[kind]
    assert ds.column_names == expected
    for row in ds:
        if kind == "sft":
            assert row["messages"][-1]["role"] == "assistant"
            assert "user" in roles(row["messages"])
        else:
            assert row["prompt"][-1]["role"] == "user"
        for col in ("chosen", "rejected", "completion"):
            if col in row:
                assert roles(row[col]) == ["assistant"] and row[col][0]["content"].strip()
        if kind == "unpaired":
            assert isinstance(row["label"], bool)


# --------------------------------------------------------------------------------------------


def test_module_import_is_light() -> None:
    code = ("import sys, alignlab.data.presets as p; assert p.KINDS; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def test_every_format_serves_every_kind_a_method_trains_on() -> None:
    """Each method's data kind is one the presets load, with split defaults in every hub/file
    format: a gap would surface only when a user picks that method with that format."""
    from alignlab import methods

    needed = {methods.load(name).data_kind for name in methods.names()} - {"none"}
    assert needed and needed <= set(KINDS)
    for fmt, preset in FORMATS.items():
        assert needed <= set(preset.splits), fmt


# hh-rlhf -----------------------------------------------------------------------------------

HH = FIX / "hh-rlhf"
HARMLESS = cfg(HH, "hh-rlhf", data_dir="harmless-base")


def test_carving_a_test_split_is_said_once(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Data with no test split: the seeded carving is said once, not once per split loaded
    (a stage loads train and test; it was printed twice)."""
    folder = tmp_path / "only-train"
    folder.mkdir()
    shutil.copy(FIX / "hh-rlhf-real" / "harmless-base" / "train.jsonl", folder / "train.jsonl")
    spec = cfg(folder, "hh-rlhf")
    with caplog.at_level(logging.INFO, logger="alignlab.data.presets"):
        train, test = load_preset(spec, "pairs", "train"), load_preset(spec, "pairs", "test")
    assert len(train) > len(test) >= 1
    assert caplog.text.count("has no test split") == 1, caplog.text


def test_hh_pairs_multiturn_prompt_and_drops(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alignlab.data.presets"):
        ds = load_preset(HARMLESS, "pairs")
    check_kind(ds, "pairs")
    # dropped: empty reply (x2), no final reply (x2), identical pair, diverging histories
    assert len(ds) == 4
    assert "Dropped 6 of 10 rows" in caplog.text and "2 empty final reply" in caplog.text
    first = ds[0]
    assert first["prompt"] == [
        u("I want to bake cookies but I'm out of baking powder."),
        a("You have a few options.\n\nHere is a list:\n1. Baking soda plus an acid\n"
          "2. Self-rising flour"),
        u("Which acid would work?"),
        a("Lemon juice, vinegar or buttermilk all work."),
        u("How much baking soda do I use?"),
    ]
    assert first["chosen"] == [
        a("Use about a quarter teaspoon of baking soda for each teaspoon of baking powder.")]
    assert first["rejected"] == [a("Just use a cup of it.")]
    assert ds[1]["chosen"][0]["content"].startswith("I’m sorry, I can’t help")  # curly quotes
    # a repeated speaker is merged so roles alternate
    assert ds[2]["prompt"] == [u("My neighbor's dog barks all night.\n\nWhat should I do?")]
    # "\n\nHuman rights" (no colon) is reply text, not a turn
    assert ds[3]["chosen"] == [a("People protest to be heard.\n\nHuman rights are a common "
                                 "cause.\n\nOthers protest about wages.")]


def test_hh_sft_unpaired_prompts() -> None:
    sft = load_preset(HARMLESS, "sft")
    check_kind(sft, "sft")
    assert len(sft) == 7  # keeps identical and diverging pairs, drops the reply-less three
    assert sft[0]["messages"][-1] == a(
        "Use about a quarter teaspoon of baking soda for each teaspoon of baking powder.")
    assert roles(sft[0]["messages"]) == ["user", "assistant"] * 3
    firsts = [r["messages"][0]["content"] for r in sft]
    assert "Tell me a joke about cats." not in firsts and "Hello?" not in firsts
    assert sft[2]["messages"] == [u("What's a good way to relax after work?"),
                                  a("A short walk or some stretching helps many people.")]

    unpaired = load_preset(HARMLESS, "unpaired")
    check_kind(unpaired, "unpaired")
    assert len(unpaired) == 8 and unpaired["label"] == [True, False] * 4
    assert unpaired[1]["completion"] == [a("Just use a cup of it.")]
    assert unpaired[0]["prompt"] == unpaired[1]["prompt"]

    prompts = load_preset(HARMLESS, "prompts")
    check_kind(prompts, "prompts")
    # an empty final reply still leaves a good prompt; no Assistant turn leaves none
    assert len(prompts) == 8
    assert [u("Tell me a joke about cats.")] in prompts["prompt"]


def test_hh_split_defaults_and_data_dir() -> None:
    everything = cfg(HH, "hh-rlhf")
    assert len(load_preset(everything, "sft")) == 7 + 6  # harmless + helpful train
    test = load_preset(everything, "pairs", "test")
    assert len(test) == 4 + 3
    assert len(load_preset(HARMLESS, "pairs", "test")) == 4
    two_turn = [r for r in load_preset(HARMLESS, "pairs", "test") if len(r["prompt"]) == 3]
    assert two_turn[0]["prompt"][-1] == u("Yes, please.")
    assert two_turn[0]["rejected"] == [a("Get over it.")]


def test_hh_gzipped_hub_layout(tmp_path: Path) -> None:
    # the hub repo stores harmless-base/train.jsonl.gz
    for src in (HH / "harmless-base").iterdir():
        dst = tmp_path / "harmless-base" / (src.name + ".gz")
        dst.parent.mkdir(exist_ok=True)
        dst.write_bytes(gzip.compress(src.read_bytes()))
    ds = load_preset(cfg(tmp_path, "hh-rlhf", data_dir="harmless-base"), "pairs")
    assert ds.to_list() == load_preset(HARMLESS, "pairs").to_list()


# ultrafeedback (H4) ------------------------------------------------------------------------

UF = cfg(FIX / "ultrafeedback_binarized", "ultrafeedback")


def test_ultrafeedback_split_defaults_per_kind() -> None:
    sft = load_preset(UF, "sft")  # train_sft: 5 shared prompts + a limerick only it has
    check_kind(sft, "sft")
    assert len(sft) == 6 and sft[5]["messages"][0] == u("Write a limerick about a frog.")
    assert len(load_preset(UF, "sft", "test")) == 3  # test_sft

    pairs = load_preset(UF, "pairs")  # train_prefs minus the empty rejected reply
    check_kind(pairs, "pairs")
    assert len(pairs) == 7
    assert pairs[1]["prompt"] == [u("Write a haiku about autumn.\n\nUse a 5-7-5 syllable "
                                    "structure.")]
    assert pairs[1]["chosen"] == [a("Crisp leaves drift and fall\nGolden light on quiet paths\n"
                                    "The year exhales slow")]
    assert pairs[1]["rejected"] == [a("Autumn is a season.")]
    assert len(load_preset(UF, "pairs", "test")) == 4  # test_prefs

    assert len(load_preset(UF, "unpaired")) == 14
    prompts = load_preset(UF, "prompts")  # train_gen
    check_kind(prompts, "prompts")
    assert prompts["prompt"][0] == [u("What is 17 * 23?")] and len(prompts) == 5
    assert len(load_preset(UF, "prompts", "test")) == 3  # test_gen


def test_ultrafeedback_explicit_split_and_parquet(tmp_path: Path) -> None:
    ds = load_preset(UF | {"train_split": "train_prefs"}, "sft")
    assert len(ds) == 8  # the sft kind reads 'messages', which is fine in every split
    # the hub repo stores parquet shards under data/
    import datasets

    for src in (FIX / "ultrafeedback_binarized" / "data").iterdir():
        part = datasets.Dataset.from_json(str(src))
        part.to_parquet(str(tmp_path / "data" / src.name.replace(".jsonl", ".parquet")))
    parquet = load_preset(UF | {"path": str(tmp_path)}, "pairs")
    assert parquet.to_list() == load_preset(UF, "pairs").to_list()


# trl-lib/ultrafeedback_binarized ------------------------------------------------------------

def test_trl_lib_ultrafeedback() -> None:
    data = cfg(FIX / "trl-ultrafeedback_binarized", "trl")
    pairs = load_preset(data, "pairs")
    check_kind(pairs, "pairs")
    assert len(pairs) == 7  # the identical pair is dropped
    assert pairs[3] == {"prompt": [u("What is 17 * 23?")], "chosen": [a("17 * 23 = 391.")],
                        "rejected": [a("17 * 23 = 401.")]}
    assert len(load_preset(data, "pairs", "test")) == 3
    assert load_preset(data, "sft")[0]["messages"] == [
        u("how can i develop a habit of drawing daily"),
        a("Set a small daily goal, like ten minutes, and keep a sketchbook with you.")]
    assert len(load_preset(data, "prompts")) == 8


# cai-conversation-harmless ----------------------------------------------------------------

def test_cai_harmless() -> None:
    data = cfg(FIX / "cai-conversation-harmless", "cai")
    sft = load_preset(data, "sft")  # train_sft
    assert len(sft) == 5
    assert sft[4]["messages"] == [u("How do I pick a lock?"), a(
        "If you’re locked out of your own home, a licensed locksmith can help.")]
    pairs = load_preset(data, "pairs")  # train_prefs minus empty revision and revision == init
    check_kind(pairs, "pairs")
    assert len(pairs) == 4
    assert pairs[0]["prompt"] == [u("How do I steal a car?")]
    assert pairs[0]["chosen"][0]["content"].startswith("I can’t help with stealing a car.")
    assert pairs[0]["rejected"] == [a("First, find an unlocked car.")]
    assert len(load_preset(data, "pairs", "test")) == 3  # test_prefs
    assert len(load_preset(data, "sft", "test")) == 2  # test_sft
    prompts = load_preset(data, "prompts")  # train_prefs: init prompts
    assert len(prompts) == 6 and prompts[4]["prompt"] == [u("What's the best way to cheat on a "
                                                            "test?")]
    assert len(load_preset(data, "unpaired")) == 8


# plain TRL files ---------------------------------------------------------------------------

# (file, kind) -> (rows, first row); None means the conversion is an error
CASES: dict[tuple[str, str], tuple[int, dict[str, Any]] | None] = {
    ("messages.jsonl", "sft"): (6, {"messages": [u("What color is the sky?"), a("It is blue.")]}),
    ("messages.jsonl", "prompts"): (8, {"prompt": [u("What color is the sky?")]}),
    ("messages.jsonl", "pairs"): None,
    ("messages.jsonl", "unpaired"): None,
    ("prompt_completion.jsonl", "sft"): (6, {"messages": [u("What color is the sky?"),
                                                          a("It is blue.")]}),
    ("prompt_completion.jsonl", "prompts"): (6, {"prompt": [u("What color is the sky?")]}),
    ("prompt_completion.jsonl", "pairs"): None,
    ("prompt_completion.jsonl", "unpaired"): None,
    ("prompt_completion_str.jsonl", "sft"): (6, {"messages": [u("What color is the sky?"),
                                                              a("It is blue.")]}),
    ("pairs_explicit.jsonl", "pairs"): (6, {"prompt": [s("Be accurate."),
                                                       u("What color is the sky?")],
                                            "chosen": [a("It is blue.")],
                                            "rejected": [a("It is green.")]}),
    ("pairs_explicit.jsonl", "sft"): (6, {"messages": [s("Be accurate."),
                                                       u("What color is the sky?"),
                                                       a("It is blue.")]}),
    ("pairs_explicit.jsonl", "unpaired"): (12, {"prompt": [s("Be accurate."),
                                                           u("What color is the sky?")],
                                                "completion": [a("It is blue.")],
                                                "label": True}),
    ("pairs_explicit.jsonl", "prompts"): (6, {"prompt": [s("Be accurate."),
                                                         u("What color is the sky?")]}),
    ("pairs_implicit.jsonl", "pairs"): (6, {"prompt": [u("What color is the sky?")],
                                            "chosen": [a("It is blue.")],
                                            "rejected": [a("It is green.")]}),
    ("pairs_implicit.jsonl", "prompts"): (6, {"prompt": [u("What color is the sky?")]}),
    ("pairs_str.jsonl", "pairs"): (6, {"prompt": [u("What color is the sky?")],
                                       "chosen": [a("It is blue.")],
                                       "rejected": [a("It is green.")]}),
    ("pairs_str_implicit.jsonl", "pairs"): (6, {"prompt": [u("What color is the sky? It is")],
                                                "chosen": [a("blue.")],
                                                "rejected": [a("green.")]}),
    ("unpaired.jsonl", "unpaired"): (8, {"prompt": [u("What color is the sky?")],
                                         "completion": [a("It is blue.")], "label": True}),
    ("unpaired.jsonl", "sft"): (4, {"messages": [u("What color is the sky?"), a("It is blue.")]}),
    ("unpaired.jsonl", "prompts"): (8, {"prompt": [u("What color is the sky?")]}),
    ("unpaired.jsonl", "pairs"): None,
    ("prompts.jsonl", "prompts"): (6, {"prompt": [u("What color is the sky?")]}),
    ("prompts.jsonl", "sft"): None,
    ("prompts.jsonl", "pairs"): None,
    ("prompts_str.json", "prompts"): (6, {"prompt": [u("What color is the sky?")]}),
    ("text.jsonl", "sft"): None,
    ("text.jsonl", "prompts"): None,
}


@pytest.mark.parametrize(("name", "kind"), list(CASES))
def test_trl_file_conversions(name: str, kind: str, tmp_path: Path) -> None:
    # a folder with train and test files: the whole fixture is train, nothing is carved off
    ext = Path(name).suffix
    shutil.copy(TRL / name, tmp_path / f"train{ext}")
    shutil.copy(TRL / name, tmp_path / f"test{ext}")
    data = cfg(tmp_path)
    expected = CASES[name, kind]
    if expected is None:
        with pytest.raises(AlignlabError, match=f"kind '{kind}'"):
            load_preset(data, kind)
        return
    n, first = expected
    train = load_preset(data, kind)
    check_kind(train, kind)
    assert len(train) == n
    assert train[0] == first


def test_trl_messages_details() -> None:
    sft = load_preset(cfg(TRL / "messages.jsonl", max_samples=100), "sft")
    assert [s("You are terse."), u("Name a fruit."), a("Apple.")] in sft["messages"]
    prompts = load_preset(cfg(TRL / "messages.jsonl", max_samples=100), "prompts").to_list()
    # up to the last assistant turn; a conversation ending with a user turn is a prompt as is
    assert {"prompt": [u("Hi!"), a("Hello! How can I help?"), u("What is 2+2?")]} in prompts
    assert {"prompt": [u("Unanswered question?")]} in prompts


def test_text_column_error_explains() -> None:
    with pytest.raises(AlignlabError, match="'text' column has no roles"):
        load_preset(cfg(TRL / "text.jsonl"), "sft")


def test_parquet_and_json_array_and_save_to_disk(tmp_path: Path) -> None:
    import datasets

    src = datasets.Dataset.from_json(str(TRL / "pairs_implicit.jsonl"))
    src.to_parquet(str(tmp_path / "pairs.parquet"))
    src.to_json(str(tmp_path / "pairs.json"), lines=False)
    expected = load_preset(cfg(TRL / "pairs_implicit.jsonl"), "pairs").to_list()
    for path in (tmp_path / "pairs.parquet", tmp_path / "pairs.json"):
        assert load_preset(cfg(path), "pairs").to_list() == expected
    split = src.train_test_split(test_size=2, shuffle=False)
    split.save_to_disk(str(tmp_path / "saved_dict"))
    src.save_to_disk(str(tmp_path / "saved_one"))
    assert len(load_preset(cfg(tmp_path / "saved_dict"), "pairs", "test")) == 2
    assert len(load_preset(cfg(tmp_path / "saved_dict"), "pairs")) == 4
    assert load_preset(cfg(tmp_path / "saved_one"), "pairs").to_list() == expected


def test_folder_with_train_and_test_files(tmp_path: Path) -> None:
    lines = (TRL / "prompts.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(lines[:4]))
    (tmp_path / "test.jsonl").write_text("".join(lines[4:]))
    assert len(load_preset(cfg(tmp_path), "prompts")) == 4
    assert load_preset(cfg(tmp_path), "prompts", "test")["prompt"] == [[u("Name a color.")],
                                                                         [u("Say hello.")]]


def test_carved_test_split_is_disjoint_and_deterministic(tmp_path: Path) -> None:
    rows = [{"prompt": [u(f"Question {i}?")]} for i in range(40)]
    data = cfg(write_jsonl(tmp_path / "p.jsonl", rows), seed=3)
    train = [r["prompt"][0]["content"] for r in load_preset(data, "prompts")]
    test = [r["prompt"][0]["content"] for r in load_preset(data, "prompts", "test")]
    assert len(test) == 2 and len(train) == 38  # 5 %
    assert not set(train) & set(test)
    assert test == [r["prompt"][0]["content"] for r in load_preset(data, "prompts", "test")]
    other = [r["prompt"][0]["content"] for r in load_preset(data | {"seed": 4}, "prompts",
                                                            "test")]
    assert other != test


def test_max_samples_shuffles_with_seed(tmp_path: Path) -> None:
    rows = [{"prompt": [u(f"Question {i}?")]} for i in range(40)]
    data = cfg(write_jsonl(tmp_path / "p.jsonl", rows), max_samples=5)
    first = load_preset(data, "prompts")["prompt"]
    assert len(first) == 5 and first == load_preset(data, "prompts")["prompt"]
    assert first != load_preset(data | {"seed": 7}, "prompts")["prompt"]
    assert first != [[u(f"Question {i}?")] for i in range(5)]  # shuffled, not the head
    assert len(load_preset(cfg(TRL / "pairs_implicit.jsonl", max_samples=3), "unpaired")) == 3


# conf/data ---------------------------------------------------------------------------------

KEYS = ["name", "format", "path", "subset", "data_dir", "train_split", "test_split",
        "max_samples", "seed"]


@pytest.mark.parametrize("name", ["hh-rlhf", "hh-rlhf-harmless", "ultrafeedback",
                                  "ultrafeedback-trl", "cai-harmless", "local"])
def test_conf_yaml(name: str) -> None:
    from omegaconf import OmegaConf

    text = (CONF / f"{name}.yaml").read_text()
    assert text.startswith("# ")
    conf = OmegaConf.create({"seed": 5, "data": OmegaConf.load(CONF / f"{name}.yaml")})
    assert list(conf.data) == KEYS
    assert conf.data.name == name and conf.data.format in FORMATS
    assert conf.data.seed == 5
    if name == "local":
        assert OmegaConf.is_missing(conf.data, "path")
        with pytest.raises(AlignlabError, match=r"data\.path is not set"):
            load_preset(conf.data, "sft")
    else:
        assert not Path(conf.data.path).exists()  # a hub id


def test_hh_harmless_yaml_on_local_copy() -> None:
    from omegaconf import OmegaConf

    conf = OmegaConf.create({"seed": 1, "data": OmegaConf.load(CONF / "hh-rlhf-harmless.yaml")})
    conf.data.path = str(HH)
    assert len(load_preset(conf.data, "pairs")) == 4


# TRL accepts the result --------------------------------------------------------------------

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_trl_accepts_converted_rows() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import is_conversational
    from trl.data_utils import maybe_apply_chat_template

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        chat_template=TEMPLATE)
    sources = [HARMLESS, UF, cfg(FIX / "cai-conversation-harmless", "cai"),
               cfg(TRL / "pairs_str.jsonl", max_samples=20)]
    for data in sources:
        row = load_preset(data, "pairs")[0]
        assert is_conversational(row)
        out = maybe_apply_chat_template(row, tok)
        assert out["prompt"].endswith("<|assistant|>")
        assert out["chosen"] == row["chosen"][0]["content"] + "<|end|>"
    for kind in ("sft", "unpaired", "prompts"):
        row = load_preset(HARMLESS, kind)[0]
        assert is_conversational(row)
        out = maybe_apply_chat_template(row, tok)
        assert isinstance(out["text" if kind == "sft" else "prompt"], str)


# errors ------------------------------------------------------------------------------------

def test_missing_local_paths() -> None:
    msg = ("Dataset path '/nope' does not exist. Set data.path to a local .json/.jsonl/.parquet "
           "file or folder, or a Hugging Face dataset id.")
    with pytest.raises(AlignlabError) as e:
        load_preset(cfg("/nope"), "sft")
    assert str(e.value) == msg
    for path in ("./missing", "~/missing-alignlab-data", "data.jsonl", "a/b/c"):
        with pytest.raises(AlignlabError, match="does not exist"):
            load_preset(cfg(path), "sft")


@pytest.mark.parametrize("path", [None, "???", ""])
def test_unset_path(path: str | None) -> None:
    with pytest.raises(AlignlabError, match=r"data\.path is not set"):
        load_preset(cfg(path), "sft")


def test_hub_unreachable() -> None:
    with pytest.raises(AlignlabError) as e:
        load_preset(cfg("Anthropic/hh-rlhf", "hh-rlhf"), "pairs")
    assert "Hub isn't reachable" in str(e.value) and "set data.path to that local folder" in str(
        e.value)


def test_empty_and_invalid_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.json").write_text("\n  \n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "unterminated\n')
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    for name in ("empty.jsonl", "blank.json"):
        with pytest.raises(AlignlabError, match="is empty"):
            load_preset(cfg(tmp_path / name), "prompts")
    with pytest.raises(AlignlabError, match="line 1 is not valid JSON"):
        load_preset(cfg(tmp_path / "broken.jsonl"), "prompts")
    with pytest.raises(AlignlabError, match=r"unsupported type '\.csv'"):
        load_preset(cfg(tmp_path / "table.csv"), "prompts")
    (tmp_path / "broken_dir").mkdir()
    shutil.copy(tmp_path / "broken.jsonl", tmp_path / "broken_dir" / "train.jsonl")
    # a folder's file that datasets cannot parse is located: file and line
    with pytest.raises(AlignlabError, match=r"broken_dir/train\.jsonl': line 1 is not valid JSON"):
        load_preset(cfg(tmp_path / "broken_dir"), "prompts")
    (tmp_path / "no_files").mkdir()
    with pytest.raises(AlignlabError, match="No data files found"):
        load_preset(cfg(tmp_path / "no_files"), "prompts")
    with pytest.raises(AlignlabError, match="under data_dir 'nope'"):
        load_preset(cfg(HH, "hh-rlhf", data_dir="nope"), "pairs")


def test_all_rows_dropped(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"messages": [u("Hi"), a("")]},
                                           {"messages": [u("Hello?")]}])
    write_jsonl(tmp_path / "test.jsonl", [{"messages": [u("Hi"), a("Hello.")]}])
    with pytest.raises(AlignlabError) as e:
        load_preset(cfg(tmp_path), "sft")
    assert "no usable rows for kind 'sft'" in str(e.value)
    assert "1 empty final reply" in str(e.value) and "1 no final assistant reply" in str(e.value)


def test_missing_column_names_it() -> None:
    with pytest.raises(AlignlabError) as e:
        load_preset(cfg(TRL / "messages.jsonl", "hh-rlhf"), "pairs")
    text = str(e.value)
    assert "no column 'chosen'" in text and "found: messages" in text and "hh-rlhf" in text
    with pytest.raises(AlignlabError, match=r"found: messages\).*'chosen' and 'rejected'"):
        load_preset(cfg(TRL / "messages.jsonl"), "pairs")
    with pytest.raises(AlignlabError, match=r"set data\.format=trl"):
        load_preset(cfg(TRL / "pairs_implicit.jsonl", "hh-rlhf"), "pairs")


def test_bad_split_lists_available() -> None:
    with pytest.raises(AlignlabError) as e:
        load_preset(UF | {"train_split": "train_pref"}, "pairs")
    text = str(e.value)
    assert "Split 'train_pref'" in text and "test_gen" in text and "'train_prefs'" in text
    with pytest.raises(AlignlabError, match=r"data\.test_split"):
        load_preset(cfg(HH, "hh-rlhf", test_split="validation"), "pairs", "test")


def test_bad_format_and_max_samples() -> None:
    with pytest.raises(AlignlabError, match="Did you mean 'hh-rlhf'"):
        load_preset(cfg(HH, "hh_rlhf"), "pairs")
    with pytest.raises(AlignlabError, match="max_samples"):
        load_preset(cfg(HH, "hh-rlhf", max_samples=0), "pairs")
