"""Rebuild the bundled llama-small config and tokenizer (run once by a developer, output in git).

    python -m alignlab.assets.make_llama_small

The tokenizer is a 1024-token byte-level BPE trained on the toy world's strings, so any text
(including hub datasets) still tokenises, byte by byte where needed, while every toy-world
word is one token (short sequences keep CPU training fast). The chat template is
ChatML-style with ``{% generation %}`` markers so TRL's ``assistant_only_loss`` works.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.data.toy import corpus

HERE = Path(__file__).parent / "llama-small"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "vocab_size": None,  # set from the trained tokenizer
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    "hidden_act": "silu",
    "bos_token_id": None,
    "eos_token_id": 1,
    "pad_token_id": 0,
}


MEDIUM = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
          "num_attention_heads": 8, "num_key_value_heads": 8}


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Role names open every chat turn: weight them so each becomes one token.
    texts = [*list(corpus()) * 4, *["user\n", "assistant\n", "system\n"] * 2000]
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    assert fast.convert_tokens_to_ids("<|im_end|>") == CONFIG["eos_token_id"]
    assert fast.convert_tokens_to_ids("<|endoftext|>") == CONFIG["pad_token_id"]
    # Embedding rows for the tokens that exist, rounded up to a multiple of 64 for fast matmuls.
    config = {**CONFIG, "vocab_size": -(-tok.get_vocab_size() // 64) * 64}
    HERE.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(HERE)
    (HERE / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # llama-medium: the same tokenizer, ~5.5x the parameters (the "bigger unaligned model").
    medium = HERE.parent / "llama-medium"
    fast.save_pretrained(medium)
    (medium / "config.json").write_text(json.dumps({**config, **MEDIUM}, indent=2) + "\n")
    print(f"wrote {HERE} and {medium} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
