"""Chat templates that TRL can train on with ``assistant_only_loss``.

TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers around the assistant's replies.
TRL patches the templates of the model families it knows (Qwen, Llama 3, Phi-3, ...) and refuses
every other one, including the ChatML template of SmolLM2 and many fine-tunes. For a ChatML-style
template (``<|im_start|>role\\n...<|im_end|>``) alignlab adds the markers itself, and keeps the
result only if it renders every test conversation to exactly the same text as the original.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")

# The one output expression that writes a message: role header, content and end token.
_MESSAGE_EXPR = re.compile(r"\{\{-?[^{}]*message\[['\"]content['\"]\][^{}]*-?\}\}")
_ASSISTANT_CHATML = ("{%- if message['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
                     "{%- generation %}{{- message['content'] + '<|im_end|>' }}"
                     "{%- endgeneration %}{{- '\\n' }}{%- else %}EXPR{%- endif %}")
_PROBES = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6"}],
]


def has_generation_markers(template: str) -> bool:
    """True when the template marks the assistant's replies for ``assistant_only_loss``."""
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def _render(tokenizer: Any, template: str, conversation: list[dict[str, str]],
            prompt: bool) -> str:
    return tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                         add_generation_prompt=prompt)


def patch_chatml(tokenizer: Any, template: str) -> str | None:
    """``template`` with generation markers around assistant replies, or None when it is not a
    ChatML-style template this patch reproduces exactly."""
    found = _MESSAGE_EXPR.findall(template)
    if len(found) != 1:
        return None
    patched = template.replace(found[0], _ASSISTANT_CHATML.replace("EXPR", found[0]))
    try:
        for conv in _PROBES:
            if "<|im_start|>assistant\n" + conv[-1]["content"] + "<|im_end|>" not in \
                    _render(tokenizer, template, conv, False):
                return None
            for prompt in (False, True):
                turns = conv[:-1] if prompt else conv
                if _render(tokenizer, patched, turns, prompt) != \
                        _render(tokenizer, template, turns, prompt):
                    return None
    except Exception:  # a template that can't render the probes is not one we can patch
        return None
    return patched


def for_assistant_only_loss(tokenizer: Any, source: str) -> None:
    """Make ``tokenizer.chat_template`` usable with TRL's ``assistant_only_loss``.

    Leaves templates with markers, and those TRL patches itself, as they are; adds markers to
    ChatML-style ones; otherwise stops with the two ways out.
    """
    template = tokenizer.chat_template
    if not isinstance(template, str) or has_generation_markers(template):
        return
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
        return  # TRL knows this family and patches it itself
    except ValueError:
        pass
    patched = patch_chatml(tokenizer, template)
    if patched is None:
        raise AlignlabError(
            f"The chat template of '{source}' does not mark the assistant's replies "
            "({% generation %}), so method.args.assistant_only_loss=true cannot tell replies from "
            "prompts. Set model.chat_template to a template with {% generation %} markers, or "
            "train on whole conversations with method.args.assistant_only_loss=false.")
    log.info("Added {%% generation %%} markers to the ChatML chat template of %s so that "
             "assistant_only_loss trains on the replies only (the rendered text is unchanged)",
             source)
    tokenizer.chat_template = patched
