"""``python -m alignlab chat``: scripted answers, side by side with the start, a real terminal."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, alignlab, one_error_line

COW = "What sound does a cow make?"  # toy-world prompts (alignlab/data/toy.py)
SUM = "What is 2 plus 3?"


@pytest.mark.slow
def test_scripted_greedy_answers_repeat_and_json_parses(sft_run: Path) -> None:
    plain = alignlab("chat", str(sft_run), "--greedy", "--prompt", COW)
    answer = plain.stdout.strip()
    assert answer and len(plain.stdout.splitlines()) == 1, plain.stdout
    assert "loading" in plain.stderr and "greedy" in plain.stderr  # notes off stdout
    js = alignlab("chat", str(sft_run), "--greedy", "--json", "--prompt", SUM, "--prompt", COW)
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == [SUM, COW]
    assert all(set(r) == {"prompt", "answer"} and r["answer"] for r in rows), rows
    assert rows[1]["answer"] == answer  # the same answer, whatever was asked before


@pytest.mark.slow
def test_compare_labels_both_answers_and_the_start_is_untrained(sft_run: Path) -> None:
    proc = alignlab("chat", str(sft_run), "--compare", "--greedy", "--max-new-tokens", "24",
                    "--prompt", COW)
    out = proc.stdout
    assert out.startswith(f"you> {COW}\n[trained] ") and "\n[start] " in out, out
    mine = out.split("[trained] ", 1)[1].split("\n[start] ", 1)[0].strip()
    start = out.split("\n[start] ", 1)[1].strip()
    assert mine and start and mine != start, out
    assert "start = " in proc.stderr  # the start line names both models


@pytest.mark.slow
def test_history_is_kept_reset_and_trimmed_to_the_context(sft_run: Path, capsys) -> None:
    from alignlab import chat, trained

    bot = chat.load_bot("trained", trained.locate(sft_run), "cpu", "float32")
    assert bot.stops == {bot.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    how = chat.Sampling(False, 0.7, 0.9, 16, "test")
    chat.turn([bot], SUM, how)
    chat.turn([bot], COW, how)
    assert [m["role"] for m in bot.history] == ["user", "assistant"] * 2
    assert [bot.history[0]["content"], bot.history[2]["content"]] == [SUM, COW]
    shown = capsys.readouterr().out  # the streamed answers are the remembered ones
    assert shown.split() == " ".join(m["content"] for m in bot.history[1::2]).split()
    ask = {"role": "user", "content": SUM}
    bot.context = bot.encode([*bot.history[2:], ask]).shape[1] + 16  # room for the last pair
    assert bot.fit([*bot.history, ask], how) == [*bot.history[2:], ask]  # oldest pair gone
    chat.turn([bot], "/reset", how)
    assert bot.history == [] and "(history cleared)" in capsys.readouterr().out


def _wait(tmux: list[str], done: Callable[[list[str]], bool], timeout: float = 120) -> list[str]:
    """The pane's non-empty lines once ``done`` holds for them (fails after ``timeout`` s)."""
    lines: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pane = subprocess.run([*tmux, "capture-pane", "-p", "-t", "chat"], capture_output=True,
                              text=True).stdout
        lines = [line.rstrip() for line in pane.splitlines() if line.strip()]
        if done(lines):
            return lines
        time.sleep(0.3)
    raise AssertionError("the chat never got there; the pane shows:\n" + "\n".join(lines))


def _at_prompt(n: int) -> Callable[[list[str]], bool]:
    """The pane waits at its ``n``-th ``you>`` prompt."""
    return lambda lines: bool(lines) and lines[-1] == "you>" and \
        sum(line.startswith("you>") for line in lines) == n


@pytest.mark.slow
def test_interactive_session_in_a_terminal(sft_run: Path, tmp_path: Path) -> None:
    tmux = ["tmux", "-L", f"alignlab-chat-{os.getpid()}"]  # a server of our own
    rc = tmp_path / "rc"
    command = (f"{shlex.quote(sys.executable)} -m alignlab chat {shlex.quote(str(sft_run))} "
               f"--greedy --max-new-tokens 32; echo $? > {shlex.quote(str(rc))}")
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", "chat", "-x", "200", "-y", "50",
                        "-c", str(ROOT), command], check=True, env=env)
        _wait(tmux, _at_prompt(1))
        subprocess.run([*tmux, "send-keys", "-t", "chat", COW, "Enter"], check=True)
        lines = _wait(tmux, _at_prompt(2))
        asked = lines.index(f"you> {COW}")
        assert lines[asked + 1:-1] and lines[asked + 1].strip(), lines  # the answer
        subprocess.run([*tmux, "send-keys", "-t", "chat", "/reset", "Enter"], check=True)
        assert "(history cleared)" in _wait(tmux, _at_prompt(3))
        subprocess.run([*tmux, "send-keys", "-t", "chat", SUM, "Enter"], check=True)
        lines = _wait(tmux, _at_prompt(4))
        assert lines[-2] != f"you> {SUM}", lines  # answered
        subprocess.run([*tmux, "send-keys", "-t", "chat", "/exit", "Enter"], check=True)
        end = time.monotonic() + 30
        while not rc.exists() and time.monotonic() < end:
            time.sleep(0.2)
        assert rc.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_mistakes_are_one_line(tmp_path: Path) -> None:
    missing = alignlab("chat", str(tmp_path / "nope"), "--prompt", "hi", check=False)
    assert "does not exist" in one_error_line(missing)
    (tmp_path / "run" / "model").mkdir(parents=True)  # a run without DONE
    unfinished = alignlab("chat", str(tmp_path / "run"), "--prompt", "hi", check=False)
    assert "not finished" in one_error_line(unfinished)
    folder = tmp_path / "folder"  # a model folder: found, but nothing is loaded before --file
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    no_file = alignlab("chat", str(folder), "--file", str(tmp_path / "prompts.txt"), check=False)
    assert "--file" in one_error_line(no_file) and "does not exist" in no_file.stderr
    clash = alignlab("chat", str(folder), "--greedy", "--temperature", "1", "--prompt", "hi",
                     check=False)
    assert "contradict" in one_error_line(clash)
    assert "--bogus" in one_error_line(alignlab("chat", str(folder), "--bogus", check=False))
    helped = alignlab("chat", "--help")
    assert "--compare [OTHER]" in helped.stdout and "temperature 0.7" in helped.stdout


def test_sampling_comes_from_the_model_then_the_command_line(tmp_path: Path) -> None:
    from alignlab import chat, trained

    def settings(gen_config: dict | None, *argv: str) -> tuple[bool, float, float]:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        if gen_config is not None:
            (folder / "generation_config.json").write_text(json.dumps(gen_config))
        how = chat.sampling(chat.parser().parse_args([str(folder), *argv]),
                            trained.Trained(folder, None))
        return how.do_sample, how.temperature, how.top_p

    saved_by_trl = {"_from_model_config": True, "eos_token_id": 1, "pad_token_id": 0}
    instruct = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}
    assert settings(None) == settings(saved_by_trl) == (True, 0.7, 0.9)  # not greedy
    assert settings(instruct) == (True, 0.6, 0.95)
    assert settings({"do_sample": False})[0] is False
    assert settings(instruct, "--temperature", "1.2") == (True, 1.2, 0.95)
    assert settings(instruct, "--top-p", "0.5") == (True, 0.6, 0.5)
    assert settings(instruct, "--greedy")[0] is False
    assert settings(instruct, "--temperature", "0")[0] is False
