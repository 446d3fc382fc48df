"""Constitutions: loading, validation messages, principle sampling and prompt layout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from alignlab import constitution as const
from alignlab.config import conf_dir
from alignlab.errors import AlignlabError

PROMPT = [{"role": "user", "content": "How do I build a bomb?"}]


def _compose(*overrides: str):
    from alignlab import cli, config

    config.register()
    return cli.compose(list(overrides))


@pytest.mark.parametrize("name, n", [("harmless", 16), ("toy", 4)])
def test_bundled_constitutions_are_valid(name: str, n: int) -> None:
    cfg = _compose("method=cai", f"constitution={name}")
    c = const.load(cfg.constitution, need_choice=True)
    assert c.name == name and len(c.principles) == n
    assert all(p.critic and p.revision and p.choice for p in c.principles)
    assert len({p.critic for p in c.principles}) == n  # no duplicated principle
    assert c.few_shot and all(chat[-1]["role"] == "assistant" for chat in c.few_shot)


def test_default_group_is_harmless_and_path_override_wins(tmp_path: Path) -> None:
    assert const.load(_compose("method=cai").constitution).name == "harmless"
    own = tmp_path / "mine.yaml"
    own.write_text("principles:\n"
                   "  - {critic: Find flaws., revision: Fix them., choice: 'Which?'}\n")
    c = const.load(_compose("method=cai", f"constitution.path={own}").constitution)
    assert c.name == "mine" and [p.critic for p in c.principles] == ["Find flaws."]
    assert c.few_shot == () and c.judge_prefix == const.DEFAULT_JUDGE_PREFIX


def test_llm_swarm_format_loads(tmp_path: Path) -> None:
    """The public SL-CAI reproduction's JSON (constitutions + system_chat) loads unchanged."""
    path = tmp_path / "anthropic.json"
    path.write_text(json.dumps({
        "constitutions": [{"critic": "Critique it.", "revision": "Revise it."}],
        "system_chat": [[{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}]]}))
    c = const.load({"path": str(path)})
    assert c.principles[0].revision == "Revise it." and c.few_shot[0][1]["content"] == "hello"


@pytest.mark.parametrize("text, message", [
    ("principles: []\n", "has no principles"),
    ("few_shot: []\n", "has no principles"),
    ("principles:\n  - {critic: x}\n", "is missing 'revision'"),
    ("principles:\n  - {critic: '', revision: y}\n", "is missing 'critic'"),
    ("principles:\n  - {critic: x, revison: y}\n", "Did you mean 'revision'"),
    ("principals:\n  - {critic: x, revision: y}\n", "Did you mean 'principles'"),
    ("principles: [\n", "is not valid YAML (line"),
    ("- just a list\n", "holds a list, not a layout alignlab reads"),
    ("principles:\n  - {critic: x, revision: y}\nfew_shot:\n  - - {role: bot, content: hi}\n",
     "bad message"),
    ("principles:\n  - {critic: x, revision: y}\nfew_shot:\n  - - {role: user, content: hi}\n",
     "must end with an assistant message"),
    ("principles:\n  - {critic: x, revision: y}\njudge_template: '{a} {b} {question}'\n",
     "lacks"),
    ("principles:\n  - {critic: x, revision: y}\njudge_template: '{prompt} {a} {b} {q}'\n",
     "not a valid template"),
])
def test_bad_files_get_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(AlignlabError, match=message.replace("(", r"\(")):
        const.load({"path": str(path)})


def test_missing_file_and_missing_constitution() -> None:
    with pytest.raises(AlignlabError, match="was not found"):
        const.load({"path": "/nonexistent/c.yaml"})
    with pytest.raises(AlignlabError, match="needs a constitution"):
        const.load({})


def test_judge_needs_choice_questions(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("principles:\n  - {critic: x, revision: y}\n")
    const.load({"path": str(path)})  # fine for cai
    with pytest.raises(AlignlabError, match="no 'choice' question"):
        const.load({"path": str(path)}, need_choice=True)


def test_principle_sampling_is_seeded_per_row() -> None:
    c = const.load({"path": str(conf_dir() / "constitution" / "harmless.yaml")})
    draw = [const.sample_principles(c, const.rng_for(7, f"train-{i}"), 3) for i in range(200)]
    again = [const.sample_principles(c, const.rng_for(7, f"train-{i}"), 3) for i in range(200)]
    assert draw == again  # same seed and row key: same principles, whatever the batching
    other = [const.sample_principles(c, const.rng_for(8, f"train-{i}"), 3) for i in range(200)]
    assert draw != other
    used = {p.critic for row in draw for p in row}
    assert len(used) == 16  # 600 draws reach every principle


def test_cai_conversation_layout() -> None:
    c = const.load({"path": str(conf_dir() / "constitution" / "harmless.yaml")})
    few = const.few_shot_messages(c)
    assert len(few) == 12 and few[0]["role"] == "user"
    assert const.few_shot_messages(c, 1) == list(c.few_shot[0])
    p = c.principles[3]
    init = const.initial_conversation(few, PROMPT)
    crit = const.critique_conversation(few, PROMPT, "Sure, here's how.", p)
    rev = const.revision_conversation(few, PROMPT, "Sure, here's how.", p, "It is harmful.")
    assert init == [*few, *PROMPT]
    assert crit == [*init, {"role": "assistant", "content": "Sure, here's how."},
                    {"role": "user", "content": p.critic}]
    assert rev == [*crit, {"role": "assistant", "content": "It is harmful."},
                   {"role": "user", "content": p.revision}]
    roles = [m["role"] for m in rev]
    assert all(a != b for a, b in itertools.pairwise(roles))  # strict alternation


def test_chat_template_renders_few_shot_then_prompt() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(const.__file__).parent / "assets" /
                                            "llama-small"))
    c = const.load({"path": str(conf_dir() / "constitution" / "toy.yaml")})
    conv = const.critique_conversation(const.few_shot_messages(c), PROMPT, "Sure!",
                                       c.principles[0])
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.index("rob a bank") < text.index("build a bomb") < text.rindex(
        c.principles[0].critic)
    assert text.count("<|im_start|>user") == 3 + 2 and text.endswith("<|im_start|>assistant\n")


def test_judge_query_layout_and_swap() -> None:
    c = const.load({"path": str(conf_dir() / "constitution" / "harmless.yaml")},
                   need_choice=True)
    conv, prefix = const.judge_query(c, PROMPT, "No.", "Sure!", "Which is safer?")
    text = conv[0]["content"]
    assert prefix == "The answer is: ("
    assert "Human: How do I build a bomb?" in text and "Which is safer?" in text
    assert text.index("(A) No.") < text.index("(B) Sure!")
    swapped, _ = const.judge_query(c, PROMPT, "Sure!", "No.", "Which is safer?")
    assert "(A) Sure!" in swapped[0]["content"] and "(B) No." in swapped[0]["content"]
    cot, _ = const.judge_query(c, PROMPT, "No.", "Sure!", "Which?", reasoning="B helps harm.")
    assert [m["role"] for m in cot] == ["user", "assistant", "user"]
    assert const.COT_REQUEST in cot[0]["content"] and cot[1]["content"] == "B helps harm."


def test_judge_sft_rows_balance_positions() -> None:
    c = const.load({"path": str(conf_dir() / "constitution" / "toy.yaml")}, need_choice=True)
    pairs = [{"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "No."}],
              "rejected": [{"role": "assistant", "content": "Sure!"}]}] * 3
    rows = const.judge_sft_rows(pairs, c, seed=0)
    answers = [r["messages"][-1]["content"] for r in rows]
    assert answers == ["(A)", "(B)"] * 3
    assert "(A) No." in rows[0]["messages"][0]["content"]
    assert "(A) Sure!" in rows[1]["messages"][0]["content"]


def test_args_are_validated_before_anything_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys; from alignlab import cli, config; config.register(); "
            "cli.compose(['method=cai', 'method.args.rounds=2', 'constitution=toy']); "
            "cli.compose(['method=judge', 'method.args.clamp=[0.4,0.6]']); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AlignlabError, match="expects int"):
        _compose("method=cai", "method.args.rounds=two")
