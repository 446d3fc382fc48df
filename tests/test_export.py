"""``python -m alignlab export``: merged folder, GGUF round trip, Modelfile, card, refusals, push.

The parity claims are checked here independently of the export's own figures: the test loads the
exported GGUF with transformers' GGUF reader itself and compares next-token distributions with
the trained model's on the run's held-out prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab import export
from tests.conftest import alignlab, one_error_line, shared_run

COW = "What sound does a cow make?"


def kl_and_agreement(a, b, seqs) -> tuple[float, float, float]:
    """(mean KL(a || b) per token, max, greedy agreement) over the answers' positions."""
    import torch

    with torch.no_grad():
        la = torch.cat([a(s).logits[0, n - 1:-1].log_softmax(-1) for s, n in seqs])
        lb = torch.cat([b(s).logits[0, n - 1:-1].log_softmax(-1) for s, n in seqs])
    kl = (la.exp() * (la - lb)).sum(-1)
    return float(kl.mean()), float(kl.max()), float((la.argmax(-1) == lb.argmax(-1)).float()
                                                    .mean())


def held_out_prompts(run: Path, n: int = 8) -> list[str]:
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return list(dict.fromkeys(r["prompt"] for r in rows))[:n]


@pytest.mark.slow
def test_export_of_a_full_run_round_trips_through_gguf(sft_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "shipped"
    proc = alignlab("export", str(sft_run), "--out", str(out), "--gguf", "q8_0,f16")
    assert "greedy agreement" in proc.stdout
    info = json.loads((out / "export.json").read_text())
    assert set(info["gguf"]) == {"q8_0", "f16"}
    assert all(info["parity"][t]["within_tolerance"] for t in ("merged", "q8_0", "f16"))
    # independently: the exported GGUF, read back by transformers, behaves like the trained model
    trained = AutoModelForCausalLM.from_pretrained(sft_run / "model", dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(sft_run / "model")
    seqs = export.sequences(trained, tok, held_out_prompts(sft_run), 16)  # greedy answers
    for outtype, tolerance in (("q8_0", export.TOLERANCE["q8_0"]),
                               ("f16", export.TOLERANCE["f16"])):
        name = info["gguf"][outtype]["file"]
        back = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype="float32").eval()
        mean_kl, max_kl, agree = kl_and_agreement(trained, back, seqs)
        assert mean_kl < tolerance and agree > 0.9, (outtype, mean_kl, max_kl, agree)
        back_tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
        text = tok.apply_chat_template([{"role": "user", "content": COW}], tokenize=False,
                                       add_generation_prompt=True)
        assert back_tok(text)["input_ids"] == tok(text)["input_ids"]
    # GGUF in: the exported file is a model alignlab takes back, with the chat template and the
    # tokenizer the file holds (not the tokenizer.json beside it), and answers as the run does
    f16 = out / info["gguf"]["f16"]["file"]
    answer = alignlab("chat", str(sft_run), "--greedy", "--prompt", COW).stdout
    assert alignlab("chat", str(f16), "--greedy", "--prompt", COW).stdout == answer
    # the f16 file is closer than the 8-bit one (the tolerance is per type for a reason)
    assert info["parity"]["f16"]["mean_kl"] <= info["parity"]["q8_0"]["mean_kl"]
    # a standalone folder: loads without alignlab, stops at the end of a turn, no sampling knobs
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="float32")
    assert not merged.generation_config.do_sample
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    stops = merged.generation_config.eos_token_id
    assert im_end in (stops if isinstance(stops, list) else [stops])
    # Ollama's Modelfile: the right file, the template's stop token, and a TEMPLATE that renders
    # conversations exactly as the chat template does
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{info['gguf']['q8_0']['file']}\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "{{-" not in modelfile
    parts = export.turn_parts(tok)
    talk = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": COW},
            {"role": "assistant", "content": "A cow says moo."},
            {"role": "user", "content": "Why?"}]
    assert export.go_render(parts, talk) == tok.apply_chat_template(
        talk, tokenize=False, add_generation_prompt=True)
    # the card carries the run's evaluation with intervals and n, the files and the command
    readme = (out / "README.md").read_text()
    assert "| helpful |" in readme and " prompts) |" in readme and "[" in readme
    assert info["gguf"]["q8_0"]["file"] in readme and "python -m alignlab" in readme


SHORT_LORA = ["model.lora=true", "method.args.learning_rate=5e-3",
              "method.args.save_strategy=no", "quick_eval=false", "report_to=none"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, sft_run: Path) -> Path:
    """A short LoRA SFT on top of the SFT run (an adapter whose base is a local folder)."""
    return shared_run(tmp_path_factory, "lora-sft", f"model.path={sft_run}/model",
                      "model.lora.r=8", "method.args.max_steps=8", *SHORT_LORA)


@pytest.fixture(scope="module")
def lora_on_lora_run(tmp_path_factory: pytest.TempPathFactory, lora_run: Path) -> Path:
    """A second LoRA trained on top of the first adapter (as LoRA DPO after LoRA SFT)."""
    return shared_run(tmp_path_factory, "lora-on-lora", f"model.path={lora_run}/model",
                      "model.lora.r=4", "method.args.max_steps=4", *SHORT_LORA)


@pytest.mark.slow
def test_stacked_adapters_merge_in_order(lora_run: Path, lora_on_lora_run: Path,
                                         tmp_path: Path) -> None:
    """The second adapter's base is the first adapter: both merge, in order."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "stacked"
    alignlab("export", str(lora_on_lora_run), "--out", str(out), "--gguf", "none")
    first = json.loads((lora_run / "model/adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(first["base_model_name_or_path"],
                                                dtype="float32")
    by_hand = PeftModel.from_pretrained(base, lora_run / "model").merge_and_unload()
    by_hand = PeftModel.from_pretrained(by_hand, lora_on_lora_run / "model").eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": COW}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        want, got = by_hand(ids).logits, merged(ids).logits
        with by_hand.disable_adapter():
            first_only = by_hand(ids).logits
    assert torch.allclose(want, got, atol=1e-4, rtol=0), float((want - got).abs().max())
    assert float((first_only - want).abs().max()) > 1e-3  # the second adapter is in there


@pytest.mark.slow
def test_lora_run_merges_into_a_standalone_folder(lora_run: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (lora_run / "model" / "adapter_config.json").exists()
    out = tmp_path / "merged"
    alignlab("export", str(lora_run / "model"), "--out", str(out), "--gguf", "none")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    assert not (out / "Modelfile").exists()  # no GGUF, no Modelfile
    base_dir = json.loads((lora_run / "model/adapter_config.json").read_text())[
        "base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="float32")
    adapter = PeftModel.from_pretrained(base, lora_run / "model").eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": COW}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        a, m = adapter(ids).logits, merged(ids).logits
    assert torch.allclose(a, m, atol=1e-4, rtol=0), float((a - m).abs().max())
    with adapter.disable_adapter(), torch.no_grad():
        plain = adapter(ids).logits
    assert float((plain - a).abs().max()) > 1e-2  # the adapter changed the model: merge matters


def export_line(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """``python -m alignlab export ARGV`` in this process (the CLI's own entry point): exit 2
    and one ``alignlab: error:`` line, which is returned."""
    code = export.main(list(argv))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("alignlab: error: "), lines
    return lines[0]


@pytest.mark.slow
def test_export_refuses_what_it_did_not_make(sft_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = export_line(capsys, str(sft_run), "--out", str(mine), "--gguf", "none", "--overwrite")
    assert "not an alignlab export" in line and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    line = export_line(capsys, str(sft_run), "--gguf", "q9")
    assert "q9" in line and "q8_0" in line
    recipe = tmp_path / "recipe"
    (recipe / "dpo" / "model").mkdir(parents=True)
    line = export_line(capsys, str(recipe))
    assert "recipe run" in line and str(recipe / "dpo") in line
    assert "not finished" in export_line(capsys, str(recipe / "dpo"))
    with monkeypatch.context() as env:
        env.setenv(export.CONVERTER_ENV, str(tmp_path))
        line = export_line(capsys, str(sft_run), "--out", str(tmp_path / "g"))
    assert export.CONVERTER_ENV in line and not (tmp_path / "g").exists()
    again = tmp_path / "again"
    assert export.main([str(sft_run), "--out", str(again), "--gguf", "none", "--no-check"]) == 0
    line = export_line(capsys, str(sft_run), "--out", str(again), "--gguf", "none")
    assert "--overwrite" in line
    assert export.main([str(sft_run), "--out", str(again), "--gguf", "none", "--no-check",
                        "--overwrite"]) == 0
    (again / "my-notes.md").write_text("mine")  # a file the export did not write
    line = export_line(capsys, str(sft_run), "--out", str(again), "--gguf", "none", "--no-check",
                       "--overwrite")
    assert "my-notes.md" in line and (again / "my-notes.md").read_text() == "mine"
    for bad in (["--check-prompts", "0"], ["--check-prompts", "x"], ["--bogus"]):
        line = export_line(capsys, str(sft_run), *bad)
        assert "--help" in line or "check_prompts" in line, (bad, line)
    # the real command line: the same one line, no traceback
    line = one_error_line(alignlab("export", check=False))
    assert "source" in line and "--help" in line


def test_an_architecture_the_converter_cannot_handle_is_one_line(tmp_path: Path) -> None:
    """OPT has no llama.cpp conversion: one line naming the architecture, nothing left."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from alignlab import models

    folder = tmp_path / "opt"
    config = OPTConfig(vocab_size=704, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                       num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=16)
    OPTForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(models.ASSETS / "llama-small").save_pretrained(folder)
    line = one_error_line(alignlab("export", str(folder), "--out", str(tmp_path / "x"),
                                   "--no-check", check=False))
    assert "OPTForCausalLM" in line and "--gguf none" in line, line
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()


@pytest.mark.slow
def test_push_is_checked_before_any_work_and_fails_offline_in_one_line(
        sft_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_" + "x" * 34
    out = tmp_path / "p"
    common = [str(sft_run), "--out", str(out), "--gguf", "none", "--no-check"]
    monkeypatch.setenv("HF_TOKEN", "")
    assert "HF_TOKEN" in export_line(capsys, *common, "--push", "a/b") and not out.exists()
    monkeypatch.setenv("HF_TOKEN", token)
    assert "repo id" in export_line(capsys, *common, "--push", "no owner") and not out.exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in export_line(capsys, *common, "--push", "me/model")
    assert not out.exists()
    # up to the network: a Hub that cannot be reached -> one line; the finished export stays
    proc = alignlab("export", *common, "--push", "me/model", check=False,
                    env={"HF_TOKEN": token, "HF_HUB_OFFLINE": "0",
                         "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"})
    line = one_error_line(proc)
    assert "Uploading to 'me/model' failed" in line and "hf upload" in line
    assert (out / "export.json").exists() and (out / "model.safetensors").exists()
    for path in out.iterdir():  # the token reached no file
        assert token not in path.read_bytes().decode("utf-8", "replace"), path
    assert token not in proc.stdout + proc.stderr


def test_gguf_types_are_checked() -> None:
    assert export.gguf_types("q8_0, F16,q8_0") == ["q8_0", "f16"]
    assert export.gguf_types("none") == [] and export.gguf_types(None) == []
    with pytest.raises(Exception, match="Did you mean 'q8_0'"):
        export.gguf_types("q8_1")
