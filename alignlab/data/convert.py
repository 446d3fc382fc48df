"""Row converters: a dataset's rows in its ``data.format`` (hh-rlhf transcripts, the H4
datasets, TRL's own formats) into one of the four *kinds* TRL's trainers read (see
:mod:`alignlab.data.presets`), and the table of formats (:data:`FORMATS`).

Malformed rows raise :class:`SkipRow` with the reason they are dropped; columns a format needs
are checked (:func:`_require`) before any row is read.
"""


from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

KINDS = ("sft", "pairs", "unpaired", "prompts")

Message = dict[str, str]
Row = dict[str, Any]
RowConverter = Callable[[Mapping[str, Any]], list[Row]]

_ROLES = ("system", "user", "assistant")
# Other datasets' names for the same roles (ShareGPT, Gemini, OpenAI).
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                 "developer": "system"}
_MISSING = "???"  # Hydra's mandatory-value marker


class SkipRow(Exception):  # an internal signal, never raised to the user: the row is dropped
    """A row that can't be converted; its message is the reason, counted in the drop warning."""


# --------------------------------------------------------------------------------------------
# Conversations


def _messages(value: Any, str_role: str) -> list[Message]:
    """A clean list of {role, content} messages; a plain string becomes one ``str_role`` message."""
    if isinstance(value, str):
        # Plain-text completions usually start with the space that joined them to the prompt;
        # as a message of its own that space would reach the chat template.
        return [{"role": str_role, "content": value.strip()}]
    if not isinstance(value, (list, tuple)) or not value:
        raise SkipRow("empty or non-list conversation")
    out = []
    for m in value:
        if not isinstance(m, Mapping):
            raise SkipRow("message is not a {role, content} mapping")
        role = m.get("role") if m.get("role") is not None else m.get("from")
        content = m.get("content") if m.get("content") is not None else m.get("value")
        role = _ROLE_ALIASES.get(str(role).lower(), str(role).lower())
        if role not in _ROLES:
            raise SkipRow(f"unsupported role {role!r}")
        if not isinstance(content, str):
            raise SkipRow("message content is not text")
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt or prompt[-1]["role"] != "user":
        raise SkipRow("prompt does not end with a user turn")
    if not prompt[-1]["content"].strip():
        raise SkipRow("empty user turn")
    return prompt


def _split_last(conv: list[Message]) -> tuple[list[Message], list[Message]]:
    """(prompt, [final assistant message]) of a conversation that ends with a non-empty reply."""
    if not conv or conv[-1]["role"] != "assistant":
        raise SkipRow("no final assistant reply")
    if not conv[-1]["content"].strip():
        raise SkipRow("empty final reply")
    return _check_prompt(conv[:-1]), conv[-1:]


def _prompt_of(conv: list[Message]) -> list[Message]:
    """The conversation up to (not including) its last assistant turn."""
    if conv and conv[-1]["role"] == "assistant":
        conv = conv[:-1]
    return _check_prompt(conv)


def _sft(conv: list[Message]) -> Row:
    _split_last(conv)
    return {"messages": conv}


def _pair(chosen: list[Message], rejected: list[Message]) -> Row:
    """Explicit-prompt pair from two full conversations that differ only in the final reply."""
    prompt, good = _split_last(chosen)
    prompt_r, bad = _split_last(rejected)
    if prompt != prompt_r:
        raise SkipRow("chosen and rejected have different prompts")
    if good == bad:
        raise SkipRow("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": good, "rejected": bad}


def _from_pair(chosen: list[Message], rejected: list[Message] | None, kind: str) -> list[Row]:
    """Rows of ``kind`` from one preference pair given as full conversations."""
    if kind == "sft":
        return [_sft(chosen)]
    if kind == "prompts":
        return [{"prompt": _prompt_of(chosen)}]
    assert rejected is not None
    pair = _pair(chosen, rejected)
    if kind == "pairs":
        return [pair]
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


# --------------------------------------------------------------------------------------------
# hh-rlhf: "\n\nHuman: ...\n\nAssistant: ..." transcripts

# The transcripts start with "\n\nHuman:"; a few lack the leading blank line.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def _parse_hh(text: Any) -> list[Message]:
    """Messages of one hh-rlhf transcript; content is stripped, repeated speakers are merged."""
    if not isinstance(text, str):
        raise SkipRow("transcript is not a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise SkipRow("text before the first 'Human:' turn")
    if len(parts) < 3:
        raise SkipRow("no 'Human:' or 'Assistant:' turn")
    conv: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if conv and conv[-1]["role"] == role:
            # A few transcripts repeat a speaker; merging keeps roles alternating, which strict
            # chat templates (Llama 2, Mistral) require.
            conv[-1]["content"] = "\n\n".join(c for c in (conv[-1]["content"], content) if c)
        else:
            conv.append({"role": role, "content": content})
    return conv


def _plan_hh(features: Mapping[str, Any], kind: str, fmt: str, where: str) -> RowConverter:
    needed = ("chosen",) if kind in ("sft", "prompts") else ("chosen", "rejected")
    _require(features, needed, fmt, kind, where)
    for col in needed:
        if getattr(features[col], "dtype", None) not in ("string", "large_string"):
            raise AlignlabError(
                f"Column '{col}' of {where} holds {features[col]}, but the hh-rlhf format expects "
                "'\\n\\nHuman: ... \\n\\nAssistant: ...' transcript strings. "
                "For conversations (lists of messages) set data.format=trl.")

    def convert(row: Mapping[str, Any]) -> list[Row]:
        chosen = _parse_hh(row["chosen"])
        if chosen[-1]["role"] != "assistant":
            # The prompt is what precedes the last "Assistant:"; without one there is none
            # (even for kind 'prompts': such transcripts are truncated).
            raise SkipRow("no final assistant reply")
        rejected = _parse_hh(row["rejected"]) if "rejected" in needed else None
        return _from_pair(chosen, rejected, kind)

    return convert


# --------------------------------------------------------------------------------------------
# trl (and the H4 datasets, which are TRL-shaped with extra columns)

# Column layouts TRL knows, most specific first.
_LAYOUTS: dict[str, tuple[str, ...]] = {
    "pairs": ("chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "completion": ("prompt", "completion"),
    "messages": ("messages",),
    "prompts": ("prompt",),
    "text": ("text",),
}
# Layouts that convert to each kind, best first ("prompts" is any dataset with a prompt column).
_USES: dict[str, tuple[str, ...]] = {
    "sft": ("messages", "completion", "pairs", "unpaired"),
    "pairs": ("pairs",),
    "unpaired": ("unpaired", "pairs"),
    "prompts": ("prompts", "pairs", "messages"),
}
_NEEDS = {
    "sft": "a 'messages' column, 'prompt'+'completion', or 'chosen'+'rejected' (uses chosen)",
    "pairs": "'chosen' and 'rejected' columns (with an optional 'prompt')",
    "unpaired": "'prompt', 'completion' and 'label' columns, or 'chosen'+'rejected'",
    "prompts": "a 'prompt' column, 'chosen'+'rejected', or 'messages'",
}


def _is_conv(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _pair_convs(row: Mapping[str, Any]) -> tuple[list[Message], list[Message]]:
    """Full chosen and rejected conversations of a TRL preference row (explicit or implicit)."""
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    # Like trl.maybe_extract_prompt: a prompt whose type differs from chosen's (the H4 datasets'
    # string prompt next to full conversations) is a label, and the prompt is implicit.
    if prompt is not None and _is_conv(prompt) == _is_conv(chosen):
        p = _messages(prompt, "user")
        return p + _messages(chosen, "assistant"), p + _messages(rejected, "assistant")
    if isinstance(chosen, str) and isinstance(rejected, str):
        # Implicit string prompt: the shared leading text, as trl.extract_prompt does, but cut
        # back to a word boundary so "In the sky." vs "In the sea." don't split inside a word.
        shared = _common_prefix(chosen, rejected)
        if shared != chosen and shared != rejected and not shared[-1:].isspace():
            shared = shared[:max(shared.rfind(" "), shared.rfind("\n")) + 1]
        if not shared.strip():
            raise SkipRow("chosen and rejected share no prompt")
        p = _messages(shared, "user")
        return (p + _messages(chosen[len(shared):], "assistant"),
                p + _messages(rejected[len(shared):], "assistant"))
    return _messages(chosen, "assistant"), _messages(rejected, "assistant")


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SkipRow("label is not a boolean")


class MissingSplit(AlignlabError):
    """The dataset has no split to train on (a labelling or evaluation stage may not need one)."""


def map_columns(raw: datasets.Dataset, columns: Mapping[str, Any],
                where: str) -> datasets.Dataset:
    """Rename the user's columns to the names alignlab reads (``data.columns``: read name ->
    name in the file), so a file with other names works without being rewritten."""
    if not columns:
        return raw
    found = list(raw.column_names)
    syntax = ("Set data.columns as {name alignlab reads: name in your file}, e.g. "
              "data.columns='{chosen: text_correct, rejected: text_incorrect}'.")
    missing = {k: v for k, v in columns.items() if v not in found}
    if missing:
        wanted = ", ".join(f"{k}: {v}" for k, v in missing.items())
        raise AlignlabError(f"data.columns maps {{{wanted}}}, but dataset {where} has no such "
                            f"column (found: {', '.join(found) or 'none'}). {syntax}")
    clash = [k for k, v in columns.items() if k != v and k in found and k not in columns.values()]
    if clash:
        raise AlignlabError(f"data.columns renames a column to '{clash[0]}', which dataset "
                            f"{where} already has. Map that column too, or drop it from the "
                            f"file. {syntax}")
    renames = {v: k for k, v in columns.items() if k != v}
    return raw.rename_columns(renames) if renames else raw


def _plan_trl(features: Mapping[str, Any], kind: str, fmt: str, where: str) -> RowConverter:
    cols = set(features)
    present = [name for name, need in _LAYOUTS.items() if cols.issuperset(need)]
    if "unpaired" in present:  # prompt+completion+label is KTO data, never plain demonstrations
        present.remove("completion")
    layout = next((name for name in _USES[kind] if name in present), None)
    if layout is None:
        found = ", ".join(sorted(cols)) or "none"
        hint = (" A 'text' column has no roles, so it can't be turned into conversations."
                if "text" in present else "")
        raise AlignlabError(
            f"Dataset {where} has no columns for kind '{kind}' in the {fmt} format (found: "
            f"{found}); it needs {_NEEDS[kind]}.{hint} Map your columns to those names with "
            "data.columns (e.g. data.columns='{chosen: text_correct, rejected: text_incorrect}'),"
            " or use a method that trains on the data you have.")

    def convert(row: Mapping[str, Any]) -> list[Row]:
        if layout == "messages":
            conv = _messages(row["messages"], "user")
            return [_sft(conv)] if kind == "sft" else [{"prompt": _prompt_of(conv)}]
        if layout == "prompts":
            return [{"prompt": _check_prompt(_messages(row["prompt"], "user"))}]
        if layout == "pairs":
            chosen, rejected = _pair_convs(row)
            return _from_pair(chosen, rejected, kind)
        full = _messages(row["prompt"], "user") + _messages(row["completion"], "assistant")
        if layout == "completion":
            return [_sft(full)]
        prompt, completion = _split_last(full)  # unpaired
        label = _label(row["label"])
        if kind == "unpaired":
            return [{"prompt": prompt, "completion": completion, "label": label}]
        if not label:
            raise SkipRow("label False (not a demonstration)")
        return [{"messages": prompt + completion}]

    return convert


def _require(features: Mapping[str, Any], needed: Iterable[str], fmt: str, kind: str,
             where: str) -> None:
    for col in needed:
        if col not in features:
            found = ", ".join(sorted(features)) or "none"
            raise AlignlabError(
                f"Dataset {where} has no column '{col}' (found: {found}), which the {fmt} format "
                f"needs for kind '{kind}'. Check data.format and data.path, or use data.format=trl "
                "for a dataset already in a TRL format.")


# --------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class Preset:
    """How one dataset family maps onto TRL kinds.

    ``plan(features, kind, fmt, where)`` checks the columns up front (raising AlignlabError,
    ``where`` names the dataset) and returns a row converter; ``splits[kind]`` is (train
    candidates, test candidates), first match wins.
    """

    plan: Callable[[Mapping[str, Any], str, str, str], RowConverter]
    splits: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
    description: str


def _same_splits(train: tuple[str, ...], test: tuple[str, ...]) -> dict[str, Any]:
    return dict.fromkeys(KINDS, (train, test))


_SFT = (("train_sft", "train"), ("test_sft", "test"))
_PREFS = (("train_prefs", "train"), ("test_prefs", "test"))

FORMATS: dict[str, Preset] = {
    "hh-rlhf": Preset(_plan_hh, _same_splits(("train",), ("test", "validation")),
                      "Anthropic/hh-rlhf: 'chosen'/'rejected' Human/Assistant transcripts"),
    "ultrafeedback": Preset(
        _plan_trl,
        {"sft": _SFT, "pairs": _PREFS, "unpaired": _PREFS,
         "prompts": (("train_gen", "train_prefs", "train"), ("test_gen", "test_prefs", "test"))},
        "HuggingFaceH4/ultrafeedback_binarized: prompt, chosen, rejected, messages, scores"),
    "cai": Preset(_plan_trl, {"sft": _SFT, "pairs": _PREFS, "unpaired": _PREFS, "prompts": _PREFS},
                  "HuggingFaceH4/cai-conversation-harmless: init/critic/revision + TRL columns"),
    "trl": Preset(_plan_trl, _same_splits(("train",), ("test", "validation")),
                  "files already in a TRL format: messages, prompt/completion, pairs, ..."),
}


# --------------------------------------------------------------------------------------------

def setting(data: Mapping[str, Any], key: str) -> Any:
    """``data[key]``, with missing keys, None and Hydra's unset '???' all read as None."""
    try:
        value = data.get(key)
    except Exception as e:  # omegaconf's MissingMandatoryValue, without importing omegaconf
        if type(e).__name__ == "MissingMandatoryValue":
            return None
        raise
    return None if value == _MISSING else value


