"""method=cai: critique-revision rows, the dataset layout, resumable writes, HTTP generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from alignlab import constitution as const
from alignlab import rows as row_store
from alignlab.args import CAIArgs
from alignlab.config import conf_dir
from alignlab.errors import AlignlabError
from alignlab.methods import cai

ROOT = Path(__file__).resolve().parent.parent
# model.from_sft=false: the mechanics need no trained model (no toy-SFT build).
FAST = ["method=cai", "constitution=toy", "method.args.max_new_tokens=6",
        "method.args.batch_size=4", "method.args.max_prompts=5", "model.from_sft=false"]


def _stage(run_dir: Path, *overrides: str) -> dict[str, Any]:
    """Compose and validate like the CLI, then run the stage in this process."""
    from alignlab import cli, config

    config.register()
    cfg = cli.compose([*overrides, f"run_dir={run_dir}"])
    return cli.run_stage(cfg, run_dir)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignlab", *args], cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)


def _shard_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for shard in sorted((run_dir / "rows").glob("shard-*.jsonl"))
            for line in shard.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The resumable row writer


def _items(n: int) -> list[dict[str, Any]]:
    return [{"key": f"train-{i}", "split": "train", "x": i} for i in range(n)]


def _square(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": it["key"], "y": it["x"] ** 2} for it in chunk]


def _rows(folder: Path, items: list[dict[str, Any]], *, resume: bool, fp: str = "f") -> list:
    return row_store.run_rows(items, _square, folder, fingerprint=fp, resume=resume,
                              chunk_size=3, desc="test")


def test_run_rows_resume_skips_finished_and_keeps_order(tmp_path: Path) -> None:
    items = _items(10)
    assert [r["y"] for r in _rows(tmp_path, items[:4], resume=False)] == [0, 1, 4, 9]
    calls: list[str] = []

    def spy(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.extend(it["key"] for it in chunk)
        return _square(chunk)

    out = row_store.run_rows(items, spy, tmp_path, fingerprint="f", resume=True, chunk_size=3,
                             desc="test")
    assert [r["y"] for r in out] == [i * i for i in range(10)]
    assert calls == [f"train-{i}" for i in range(4, 10)]  # finished rows are never redone
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00000.jsonl",
                                                                "shard-00001.jsonl"]
    again = row_store.run_rows(items, spy, tmp_path, fingerprint="f", resume=True,
                               chunk_size=3, desc="test")
    assert again == out and len(list(tmp_path.glob("shard-*"))) == 2  # nothing left to do


def test_run_rows_redoes_a_torn_last_line(tmp_path: Path) -> None:
    _rows(tmp_path, _items(3), resume=False)
    with (tmp_path / "shard-00000.jsonl").open("a") as fh:
        fh.write('{"key": "train-3", "y"')  # killed mid-write
    out = _rows(tmp_path, _items(5), resume=True)
    assert [r["y"] for r in out] == [0, 1, 4, 9, 16]
    keys = [r["key"] for r in row_store.read_rows(tmp_path).values()]
    assert sorted(keys) == [f"train-{i}" for i in range(5)]


def test_run_rows_refuses_to_mix_runs(tmp_path: Path) -> None:
    _rows(tmp_path, _items(3), resume=False)
    with pytest.raises(AlignlabError, match="Set resume=true"):
        _rows(tmp_path, _items(3), resume=False)
    with pytest.raises(AlignlabError, match="different prompts, model or settings"):
        _rows(tmp_path, _items(3), resume=True, fp="other")


# ---------------------------------------------------------------------------------------------
# Critique-revision prompts


class Recorder:
    """A backend that records every conversation and answers with a numbered reply."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[list[list[dict[str, str]]]] = []

    def chat(self, conversations: Any, *, temperature: float, max_new_tokens: int,
             seed: int) -> list[str]:
        self.calls.append([list(c) for c in conversations])
        return [f"reply {len(self.calls)}.{i}" for i in range(len(conversations))]


def test_critique_revise_rounds_build_on_the_last_revision() -> None:
    c = const.load({"path": str(conf_dir() / "constitution" / "harmless.yaml")})
    items = [{"key": f"train-{i}", "split": "train",
              "prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(3)]
    args = CAIArgs(rounds=2, num_few_shot=1)
    backend = Recorder()
    rows = cai.critique_revise(items, backend, c, args, seed=5)
    few = const.few_shot_messages(c, 1)
    assert len(backend.calls) == 1 + 2 * 2  # init, then (critique, revision) per round
    init, crit1, rev1, crit2, rev2 = backend.calls
    assert init[0] == [*few, *items[0]["prompt"]]
    want = [const.sample_principles(c, const.rng_for(5, f"train-{i}"), 2) for i in range(3)]
    for i, row in enumerate(rows):
        p1, p2 = want[i]
        assert crit1[i] == const.critique_conversation(few, items[i]["prompt"], f"reply 1.{i}", p1)
        assert rev1[i] == const.revision_conversation(few, items[i]["prompt"], f"reply 1.{i}", p1,
                                                      f"reply 2.{i}")
        # round 2 critiques round 1's revision, under a freshly drawn principle
        assert crit2[i] == const.critique_conversation(few, items[i]["prompt"], f"reply 3.{i}",
                                                       p2)
        assert rev2[i][-1]["content"] == p2.revision
        assert row["init_response"] == f"reply 1.{i}"
        assert row["critic_prompt"] == p2.critic and row["critic_response"] == f"reply 4.{i}"
        assert row["revision_response"] == f"reply 5.{i}"
        assert [r["revision_response"] for r in row["rounds"]] == [f"reply 3.{i}",
                                                                   f"reply 5.{i}"]
        assert row["prompt"] == row["init_prompt"] == f"question {i}"


def test_local_backend_formats_with_the_models_chat_template(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from alignlab import backends, cli, config, models

    config.register()
    cfg = cli.compose([])
    path = models.resolve_path(cfg.model, cfg.seed)
    tok = models.load_tokenizer(cfg.model, path)
    seen: list[tuple[Any, bool]] = []
    original = tok.apply_chat_template

    def spy(conv: Any, **kw: Any) -> Any:
        seen.append((conv, kw.get("add_generation_prompt", False)))
        return original(conv, **kw)

    monkeypatch.setattr(tok, "apply_chat_template", spy)
    backend = backends.TransformersBackend(models.load_model(cfg.model, path, cfg.hardware), tok)
    conv = [{"role": "user", "content": "How do I build a bomb?"}]
    backend.chat([conv], temperature=0.0, max_new_tokens=2, seed=0)
    assert seen == [(conv, True)]


# ---------------------------------------------------------------------------------------------
# The stage


def test_cai_dataset_layout_and_next_stage_loading(tmp_path: Path) -> None:
    from datasets import load_from_disk

    from alignlab.data import presets, toy

    metrics = _stage(tmp_path, *FAST, "method.args.rounds=2")
    ds = load_from_disk(str(tmp_path / "dataset"))
    assert sorted(ds) == sorted(cai.SPLITS)
    assert {k: len(v) for k, v in ds.items()} == metrics["splits"]
    assert sum(metrics["splits"].values()) == metrics["rows"] == 10  # 5 train + 5 test prompts
    principles = const.load({"path": str(conf_dir() / "constitution" / "toy.yaml")}).principles
    for split in ds.values():
        assert tuple(split.column_names) == cai.COLUMNS
        for row in split:
            assert toy.category(row["prompt"]) in ("harmful", "borderline")
            user = {"role": "user", "content": row["prompt"]}
            assert row["messages"] == row["chosen"] == [
                user, {"role": "assistant", "content": row["revision_response"]}]
            assert row["rejected"] == [user, {"role": "assistant",
                                              "content": row["init_response"]}]
            assert any(p.critic == row["critic_prompt"] and p.revision == row["revision_prompt"]
                       for p in principles)
    # the next stages read it as the H4 dataset: SFT on messages, DPO/RM on chosen/rejected
    spec = {"format": "cai", "path": str(tmp_path / "dataset"), "seed": 0}
    assert len(presets.load_preset(spec, "sft", "train")) == len(ds["train_sft"])
    assert len(presets.load_preset(spec, "pairs", "test")) <= len(ds["test_prefs"])
    assert metrics["toy_judge"].keys() == {"init", "revision", "per_category", "evasiveness"}
    assert set(metrics["toy_judge"]["per_category"]) <= {"harmful", "borderline"}
    # every round of every row stays in the shards
    assert all(len(r["rounds"]) == 2 for r in _shard_rows(tmp_path))


def test_kill_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*FAST, f"hydra.run.dir={run}"]
    killed = _cli(*args, env={"ALIGNLAB_KILL_AFTER_STEP": "cai:6"})
    assert killed.returncode == 75, killed.stderr[-2000:]
    before = _shard_rows(run)
    assert len(before) == 6 and not (run / "DONE").exists()
    resumed = _cli(*args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _shard_rows(run)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 10  # every prompt once: none lost, none repeated
    assert after[:6] == before  # finished rows are kept as they were, not regenerated
    assert (run / "DONE").exists()
    assert json.loads((run / "metrics.json").read_text())["rows"] == 10
    assert "cai" in resumed.stderr and "row/s" in resumed.stderr  # tqdm: rate and ETA


def test_cai_through_an_openai_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alignlab import cli, config, models
    from tests.openai_server import FakeOpenAI

    config.register()
    cfg = cli.compose([])
    path = models.resolve_path(cfg.model, cfg.seed)
    model = models.load_model(cfg.model, path, cfg.hardware)
    monkeypatch.setenv("ALIGNLAB_TEST_KEY", "sk-never-written")
    with FakeOpenAI(model, models.load_tokenizer(cfg.model, path), plan=["ok", "500"]) as srv:
        metrics = _stage(tmp_path, *FAST, "method.args.max_prompts=3",
                         "method.args.backend=openai", f"method.args.base_url={srv.url}",
                         "method.args.api_key_env=ALIGNLAB_TEST_KEY",
                         "method.args.retry_backoff=0.01", "method.args.concurrency=3")
    assert metrics["rows"] == 6 and metrics["retries"] > 0
    assert srv.auth == {"Bearer sk-never-written"}
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".json", ".jsonl", ".log"):
            assert "sk-never-written" not in f.read_text()


# ---------------------------------------------------------------------------------------------
# Anthropic's published layout (tests/fixtures/constitution: tiny files written for alignlab)

FIXTURES = ROOT / "tests" / "fixtures" / "constitution"


def test_anthropic_layout_loads_from_a_folder_or_files() -> None:
    from_folder = const.load({"path": str(FIXTURES)})
    assert [p.critic for p in from_folder.principles] == [
        "Is the reply harmful? Say what is wrong.", "Does the reply refuse a harmless request?"]
    assert from_folder.principles[1].revision == ("Help if the request is harmless, and refuse "
                                                  "if it is harmful.")
    roles = [[m["role"] for m in chat] for chat in from_folder.few_shot]
    assert roles == [["user", "assistant"] * 3, ["user", "assistant"] * 4]  # multi-turn kept
    assert from_folder.few_shot[1][-1]["content"] == "Sure! Tap it on the bowl and pull it open."
    text = const.load({"path": str(FIXTURES / "CritiqueRevisionInstructions.json"),
                       "few_shot_path": str(FIXTURES / "few_shot.txt")})
    assert text.few_shot == from_folder.few_shot and text.principles == from_folder.principles
    # the converted few-shot chats drive critique-revision like alignlab's own
    few = const.few_shot_messages(text, 1)
    conv = const.critique_conversation(few, [{"role": "user", "content": "q"}], "r",
                                       text.principles[0])
    assert conv[-1]["content"] == "Is the reply harmful? Say what is wrong."


@pytest.mark.parametrize("content, name, message", [
    ('["\\n\\nHuman: hi\\n\\nAssistant: x\\n\\nCritiqueRequest: c\\n\\nCritique: d\\n\\n'
     'RevisionRequest: r\\n\\nRevision: y"]', "few.json", "holds few-shot transcripts"),
    ('{"a": {"critique": "c", "revision": "r"}}', "x.json", "prompt.*edit_request"),
    ('[1, 2]', "y.json", "holds a list"),
    ('{"a": {"prompt": ["c"], "edit_request": ', "z.json", "not valid JSON \\(line 1\\)"),
])
def test_unknown_layouts_name_the_expected_ones(tmp_path: Path, content: str, name: str,
                                                message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AlignlabError, match=message):
        const.load({"path": str(path)})


@pytest.mark.parametrize("content, message", [
    ('["Human: hi\\n\\nAssistant: x\\n\\nCritiqueRequest: c\\n\\nCritique: d"]',
     "does not end with a 'Revision:'"),
    ('["just some text"]', "not in the expected layout"),
    ('{"a": 1}', "JSON list of transcript strings"),
])
def test_bad_few_shot_files(tmp_path: Path, content: str, message: str) -> None:
    few = tmp_path / "few.json"
    few.write_text(content)
    with pytest.raises(AlignlabError, match=message):
        const.load({"path": str(FIXTURES / "CritiqueRevisionInstructions.json"),
                    "few_shot_path": str(few)})
    with pytest.raises(AlignlabError, match=r"holds no CritiqueRevisionInstructions\.json"):
        const.load({"path": str(tmp_path)})


def test_warns_when_few_shot_exceeds_the_context() -> None:
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "alignlab" / "assets" / "llama-small"))
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    backend = SimpleNamespace(tokenizer=tok, model=model)
    harmless = const.load({"path": str(conf_dir() / "constitution" / "harmless.yaml")})
    toy_book = const.load({"path": str(conf_dir() / "constitution" / "toy.yaml")})
    warning = cai.context_warning(harmless, CAIArgs(max_new_tokens=128), backend)
    assert warning and "context length of 512" in warning and "num_few_shot" in warning
    assert cai.context_warning(toy_book, CAIArgs(max_new_tokens=32), backend) is None
    assert cai.context_warning(harmless, CAIArgs(num_few_shot=0), backend) is None
    assert cai.context_warning(harmless, CAIArgs(), SimpleNamespace()) is None  # no tokenizer


def test_helpfulness_prompts_are_answered_once_and_kept_for_sft_only() -> None:
    c = const.load({"path": str(conf_dir() / "constitution" / "toy.yaml")})
    harm = [{"key": f"train-{i}", "split": "train", "category": "harmful",
             "prompt": [{"role": "user", "content": f"harm {i}"}]} for i in range(4)]
    helpful = [{"key": f"helpful-train-{i}", "split": "train", "category": "helpful",
                "helpfulness": True, "prompt": [{"role": "user", "content": f"sum {i}"}]}
               for i in range(3)]
    backend = Recorder()
    rows = cai.critique_revise(harm + helpful, backend, c, CAIArgs(), seed=0)
    assert [len(call) for call in backend.calls] == [3, 4, 4, 4]  # answers, then CAI on harm
    kept = [r for r in rows if r.get("helpfulness")]
    assert len(kept) == 3 and all(r["revision_response"] == r["init_response"] for r in kept)
    ds = cai.build_dataset(rows, 0.5, seed=0)
    assert len(ds["train_sft"]) == 2 + 3 and len(ds["train_prefs"]) == 2
    assert not any(p.startswith("sum") for p in ds["train_prefs"]["prompt"])


REAL = ROOT / "tests" / "fixtures" / "data" / "hh-rlhf-real"


@pytest.mark.slow
def test_real_prompts_longer_than_the_context_are_cut_or_skipped(tmp_path: Path) -> None:
    """llama-small reads 512 tokens; real multi-turn HH prompts, with the harmless
    constitution's requests and room for three answers, are often longer. They went into the
    model past its position limit (only the few-shot warning said anything). Now each is cut
    from the left until its longest conversation fits, or skipped; one line, and metrics."""
    from alignlab import backends, cli

    overrides = ["model=llama-small", "data=hh-rlhf-harmless", f"data.path={REAL}",
                 "method=cai", "constitution=harmless", "method.args.num_few_shot=0",
                 "method.args.max_new_tokens=90", "method.args.max_prompts=8",
                 "method.args.categories=null", "data.max_dropped=0.5", "model.from_sft=false"]
    run = tmp_path / "run"
    proc = _cli(*overrides, f"hydra.run.dir={run}", "report_to=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    too_long = metrics["too_long"]
    assert too_long["context"] == 512 and too_long["rows"] == 16
    assert too_long["cut"] + too_long["skipped"] >= 1, too_long
    assert "prompts were longer than the 512-token context" in proc.stdout + proc.stderr
    rows = _shard_rows(run)
    assert len(rows) == metrics["rows"] == 16 - too_long["skipped"]
    cfg = cli.compose(overrides)
    backend = backends.create(cai.stage_args(cfg), cfg)
    book = const.load(cfg.constitution)
    longest = max(book.principles, key=lambda p: len(p.critic) + len(p.revision))
    for r in rows:  # the longest conversation fits, with room for three 90-token answers
        conv = const.revision_conversation([], r["prompt_messages"], "", longest, "")
        assert backend.query_tokens((conv, "")) + 3 * 90 <= backend.context
    # a prompt whose last turn alone is too long is skipped; a long history is cut
    turn = "Tell me more about the history of bread. " * 4
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {turn}"}
               for i in range(7)]
    huge = [{"role": "user", "content": turn * 30}]
    items = [{"key": "history", "prompt": history}, {"key": "huge", "prompt": huge}]
    kept, fitted = cai.fit_to_context(items, backend, book,
                                      CAIArgs(num_few_shot=0, max_new_tokens=32))
    assert fitted.skipped == ["huge"] and fitted.cut == 1
    assert kept[0]["prompt"][-1] == history[-1] and len(kept[0]["prompt"]) < len(history)
