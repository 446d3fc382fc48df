"""Reward-model scoring of long real conversations: batched by length, truncated from the left
(the reply is at the end), each score the same as scoring that row alone."""

from __future__ import annotations

import pytest
import torch

from alignlab import evaluation


@pytest.fixture(scope="module")
def rm_and_tok():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models import build_builtin

    path = build_builtin("llama-small", 3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def _alone(model, tok, prompt, reply, limit=None) -> float:
    text = tok.apply_chat_template([*prompt, {"role": "assistant", "content": reply}],
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = ids[-limit:] if limit else ids
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_batched_scores_equal_scores_alone_and_long_rows_keep_their_end(rm_and_tok) -> None:
    model, tok = rm_and_tok
    prompts = [[{"role": "user", "content": "What is 2 plus 3?" + " Please answer." * k}]
               for k in (0, 30, 3, 12, 0, 60)]
    replies = ["5.", "I can't help with that.", "2 plus 3 is 5.", "Moo.", "Woof.", "5."]
    got = evaluation.reward_scores(model, tok, prompts, replies, batch_size=4, max_length=64)
    lengths = [len(tok(tok.apply_chat_template([*p, {"role": "assistant", "content": r}],
                                               tokenize=False), add_special_tokens=False)
                   ["input_ids"]) for p, r in zip(prompts, replies, strict=True)]
    assert max(lengths) > 64 > min(lengths)  # some rows are cut, some are not
    want = [_alone(model, tok, p, r, 64) for p, r in zip(prompts, replies, strict=True)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)
