"""Model presets and chat templates: what a preset suggests reaches the trainer, and ChatML
templates get the markers that ``assistant_only_loss`` needs."""

from __future__ import annotations

import pytest
import yaml

from alignlab import config, methods, templates


@pytest.mark.parametrize("preset", config.group_options("model"))
def test_every_suggested_trainer_argument_exists(preset: str) -> None:
    """merged_args skips keys a trainer lacks, so a renamed argument (``warmup_ratio``, removed
    in transformers 5) would silently do nothing: every key must reach at least one trainer,
    and a per-method entry must reach that method's trainer."""
    data = yaml.safe_load((config.conf_dir() / "model" / f"{preset}.yaml").read_text())
    fields = {m: set(config.dataclass_fields(methods.load(m).args_class))
              for m in methods.names()}
    for section, args in (data.get("train_args") or {}).items():
        for key in args:
            if section == "default":
                assert any(key in f for f in fields.values()), (preset, key)
            else:
                assert key in fields[section], (preset, section, key)


SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from alignlab.models import ASSETS

    return AutoTokenizer.from_pretrained(ASSETS / "llama-small")


def test_chatml_template_gets_generation_markers(tokenizer) -> None:
    """SmolLM2's template (TRL refuses to patch it): markers added, rendering unchanged, and the
    assistant mask covers exactly the replies."""
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    templates.for_assistant_only_loss(tokenizer, "smollm2")
    assert templates.has_generation_markers(tokenizer.chat_template)
    conv = [{"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "2 plus 3 is 5."}]
    assert tokenizer.apply_chat_template(conv, tokenize=False) == \
        tokenizer.apply_chat_template(conv, chat_template=SMOLLM2_TEMPLATE, tokenize=False)
    out = tokenizer.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
    reply = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(reply) == "2 plus 3 is 5.<|im_end|>"


def test_unpatchable_template_is_one_clear_error(tokenizer) -> None:
    from alignlab.errors import AlignlabError

    tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                               "{% endfor %}")
    with pytest.raises(AlignlabError, match="assistant_only_loss=false"):
        templates.for_assistant_only_loss(tokenizer, "odd-model")


def test_fields_read_from_source_are_the_real_dataclass_fields() -> None:
    """Validation reads every method's argument fields with ``ast`` (no torch before a config
    error); for each registry row they must be exactly the fields of the real class, TRL's
    included, so a TRL upgrade that moves a field to a base class cannot go unnoticed."""
    import dataclasses
    import importlib

    for name in methods.names():
        target = methods.load(name).args_class
        module, _, cls = target.partition(":")
        real = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
        assert set(config.dataclass_fields(target)) == real, (name, target)


def test_declared_choices_and_bounds_are_checked_with_a_suggestion() -> None:
    """One generic check of the Literal choices and metadata bounds on argument dataclasses;
    the choices the code uses are the declared ones (get_args), not a second list."""
    from typing import get_args

    from alignlab import args, backends, evaluation
    from alignlab.errors import AlignlabError

    rules = config.field_rules("alignlab.args:JudgeArgs")
    assert rules["backend"].choices == get_args(args.Backend) == backends.BACKENDS
    assert rules["gate"].choices == ("drop", "warn", "stop", "off")
    assert rules["num_candidates"].at_least == 2 and rules["request_timeout"].above == 0
    assert config.field_rules(evaluation.ARGS)["judge"].choices == evaluation.JUDGES
    ok = {"gate": "warn", "num_candidates": 2, "request_timeout": 0.5, "max_prompts": None}
    config.check_rules(ok, "alignlab.args:JudgeArgs", "method.args")
    for bad, message in (({"gate": "wran"}, "Did you mean 'warn'"),
                         ({"gate": "zzz"}, "is not one of drop, warn, stop, off"),
                         ({"num_candidates": 1}, "must be at least 2"),
                         ({"request_timeout": 0}, "must be above 0")):
        with pytest.raises(AlignlabError, match=message):
            config.check_rules(bad, "alignlab.args:JudgeArgs", "method.args")
    with pytest.raises(AlignlabError, match="api='chats' is not one of chat, completions"):
        config.check_instance(args.CAIArgs(api="chats"), "method.args")
