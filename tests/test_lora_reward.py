"""A LoRA reward model (what ``method=reward model.lora=true`` saves: an adapter folder with the
trained score head) loads as the reward for PPO/GRPO/RLOO and eval, scoring as it was trained."""

from __future__ import annotations

from pathlib import Path

import torch


def test_lora_reward_adapter_scores_like_the_trained_model(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab import cli, models, rewards

    base = models.build_builtin("llama-small", 3)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    peft_rm = get_peft_model(rm, LoraConfig(r=4, task_type="SEQ_CLS", target_modules="all-linear"))
    with torch.no_grad():  # as if trained: non-zero LoRA B and a changed score head
        for name, p in peft_rm.named_parameters():
            if "lora_B" in name or "score" in name:
                p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path / "rm"
    peft_rm.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    assert not (out / "config.json").exists() and (out / "adapter_config.json").exists()

    cfg = cli.compose(["method=ppo", f"method.reward_model={out}"])
    model, tok = rewards.load_reward_model(cfg, str(out))
    ids = tok(["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>"],
              return_tensors="pt", add_special_tokens=False)
    peft_rm.eval()
    with torch.no_grad():
        expected = peft_rm(**ids).logits
        got = model(**ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
