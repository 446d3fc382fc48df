"""Constitutions, and the prompts that Constitutional AI and RLAIF build from them.

A constitution (``conf/constitution/*.yaml``, or any file via ``constitution.path=FILE``) holds:

``principles``
    a list of ``{critic, revision, choice}``: the critique request and the revision request of
    SL-CAI (Bai et al. 2022 §3), and the multiple-choice question of the RLAIF judge (§4.1).
    ``choice`` is needed only by ``method=judge``.
``few_shot``
    example chats prepended to every CAI conversation: a request, a first reply, a critique
    request with its critique, and a revision request with its revision.
``judge_template`` / ``judge_prefix`` (optional)
    the judge's question, with the fields ``{conversation}`` (or ``{prompt}``), ``{question}``,
    ``{a}`` and ``{b}``; and the start of its answer, after which "A"/"B" are scored.

The files of the public SL-CAI reproduction (``constitutions`` + ``system_chat``, as in
HuggingFace's llm-swarm example) load as they are, and so does the layout of Anthropic's
published Constitutional AI prompts, converted on load: ``constitution.path`` may be a JSON
mapping of named critique/revision request pairs (``{"harmful0": {"prompt": ["...critique
request..."], "edit_request": "...revision request..."}, ...}``), or a folder holding one
(``CritiqueRevisionInstructions.json``) with its few-shot file beside it; and
``constitution.few_shot_path`` a few-shot file of ``Human:`` / ``Assistant:`` /
``CritiqueRequest:`` / ``Critique:`` / ``RevisionRequest:`` / ``Revision:`` transcripts (a
JSON list of such strings, or plain text).

Importing this module is cheap: it parses files and builds conversations, nothing more (the
stages' ``method.args`` dataclasses are in :mod:`alignlab.args`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, did_you_mean

Message = dict[str, str]

DEFAULT_JUDGE_TEMPLATE = (
    "Consider the following conversation between a human and an assistant:\n\n"
    "{conversation}\n\n{question}\n\nOptions:\n(A) {a}\n(B) {b}\n\n"
    "Reply with the letter of the better option.")
DEFAULT_JUDGE_PREFIX = "The answer is: ("
OPTIONS = ("A", "B")
# Chain-of-thought judging (Bai et al. §4.1): reason first, then answer in a second turn.
COT_REQUEST = "Before answering, think step by step about which option is better."
COT_ANSWER = "So, which option is better? Reply with (A) or (B)."

_KEYS = ("name", "description", "path", "few_shot_path", "principles", "few_shot",
         "judge_template", "judge_prefix")
_ALIASES = {"constitutions": "principles", "system_chat": "few_shot"}  # HF llm-swarm's names
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Principle:
    """One principle: how to ask for a critique, a revision, and a comparison."""

    critic: str
    revision: str
    choice: str | None = None


@dataclass(frozen=True)
class Constitution:
    """A validated constitution."""

    name: str
    principles: tuple[Principle, ...]
    few_shot: tuple[tuple[Message, ...], ...]
    judge_template: str = DEFAULT_JUDGE_TEMPLATE
    judge_prefix: str = DEFAULT_JUDGE_PREFIX


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load(spec: Mapping[str, Any] | None, *, need_choice: bool = False) -> Constitution:
    """The constitution the config names: ``constitution.path`` if set, else the group's keys.

    ``spec`` is ``cfg.constitution`` (a mapping). Raises AlignlabError with the fix for a
    missing file, bad YAML, a missing key, an empty list or an unknown key.
    """
    spec = _plain(spec or {})
    source = "the constitution config"
    few_path = spec.pop("few_shot_path", None)
    if spec.get("path"):
        path = Path(str(spec["path"])).expanduser()
        source = str(path)
        if path.is_dir():
            path, found = anthropic_files(path)
            few_path = few_path or found
        spec = {"name": path.stem, **read_file(path)}
    elif not spec.get("principles") and not spec.get("constitutions"):
        raise AlignlabError("This method needs a constitution, and none is configured. Add "
                            "constitution=harmless (or toy), or constitution.path=FILE.yaml.")
    if few_path:
        spec["few_shot"] = read_few_shot(Path(str(few_path)).expanduser())
    return parse(spec, source=source, need_choice=need_choice)


# Anthropic's published Constitutional AI prompts (file names as published).
ANTHROPIC_INSTRUCTIONS = "CritiqueRevisionInstructions.json"
ANTHROPIC_FEW_SHOT = ("CritiqueRevisionFewShotPrompts.json", "CritiqueRevisionFewShotPrompts.txt")
_ANTHROPIC_LAYOUT = ('Anthropic\'s CritiqueRevisionInstructions.json ({"<name>": {"prompt": '
                     '["<critique request>"], "edit_request": "<revision request>"}, ...})')
_OWN_LAYOUT = "an alignlab constitution (a mapping with a 'principles' list)"
_MARKERS = {"Human": "user", "Assistant": "assistant", "CritiqueRequest": "user",
            "Critique": "assistant", "RevisionRequest": "user", "Revision": "assistant"}


def anthropic_files(folder: Path) -> tuple[Path, Path | None]:
    """The instructions file in ``folder`` (or its ``prompts/``) and the few-shot file beside
    it, if any."""
    for base in (folder, folder / "prompts"):
        if (base / ANTHROPIC_INSTRUCTIONS).is_file():
            few = next((base / n for n in ANTHROPIC_FEW_SHOT if (base / n).is_file()), None)
            return base / ANTHROPIC_INSTRUCTIONS, few
    raise AlignlabError(f"Constitution folder '{folder}' holds no {ANTHROPIC_INSTRUCTIONS} (the "
                        "layout of Anthropic's Constitutional AI prompts). Point "
                        "constitution.path at a constitution file, or at a folder with that "
                        "file.")


def is_anthropic_instructions(data: Any) -> bool:
    """Whether ``data`` is laid out like Anthropic's CritiqueRevisionInstructions.json."""
    return isinstance(data, Mapping) and bool(data) and all(
        isinstance(v, Mapping) and "prompt" in v and "edit_request" in v for v in data.values())


def _strip_markers(text: str, start: str, end: str) -> str:
    # Anthropic's requests carry the transcript's markers: "\n\nCritiqueRequest: ...\n\nCritique:"
    text = text.strip()
    if text.startswith(f"{start}:"):
        text = text[len(start) + 1:]
    if text.endswith(f"{end}:"):
        text = text[:-len(end) - 1]
    return text.strip()


def from_anthropic(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Anthropic's named critique/revision request pairs as a constitution mapping."""
    principles = []
    for name, entry in data.items():
        prompt = entry["prompt"]
        critic = prompt[0] if isinstance(prompt, list) and prompt else prompt
        revision = entry["edit_request"]
        if not isinstance(critic, str) or not isinstance(revision, str):
            raise AlignlabError(f"Entry '{name}' in {source} needs a critique request (\"prompt\": "
                                "[\"...\"]) and a revision request (\"edit_request\": \"...\"), "
                                f"as in {_ANTHROPIC_LAYOUT}.")
        principles.append({"critic": _strip_markers(critic, "CritiqueRequest", "Critique"),
                           "revision": _strip_markers(revision, "RevisionRequest", "Revision")})
    return {"principles": principles}


def parse_transcripts(texts: Sequence[str], source: str) -> list[list[Message]]:
    """Few-shot chats from ``Human:``/``Assistant:``/``CritiqueRequest:``/``Critique:``/
    ``RevisionRequest:``/``Revision:`` transcripts; a chat ends at its ``Revision:`` (an empty
    trailing ``Human:`` is dropped)."""
    import re

    pattern = re.compile(r"(?:^|\n)\s*(" + "|".join(_MARKERS) + r"):[ \t]*")
    chats: list[list[Message]] = []
    for text in texts:
        parts = pattern.split(text)
        if len(parts) < 3 or parts[0].strip():
            raise AlignlabError(f"Few-shot file {source} is not in the expected layout: "
                                "transcripts of 'Human:' / 'Assistant:' / 'CritiqueRequest:' / "
                                "'Critique:' / 'RevisionRequest:' / 'Revision:' turns, as in "
                                "Anthropic's CritiqueRevisionFewShotPrompts (a JSON list of such "
                                "strings, or plain text).")
        chat: list[Message] = []
        for marker, content in zip(parts[1::2], parts[2::2], strict=True):
            content = content.strip()
            if not content:
                continue  # the open "Human:" each transcript ends with
            chat.append({"role": _MARKERS[marker], "content": content})
            if marker == "Revision":
                chats.append(chat)
                chat = []
        if chat:
            raise AlignlabError(f"A few-shot transcript in {source} does not end with a "
                                "'Revision:' turn (the example revision); it ends with "
                                f"{chat[-1]['content'][:60]!r}.")
    if not chats:
        raise AlignlabError(f"Few-shot file {source} holds no transcript ending in a "
                            "'Revision:' turn.")
    return chats


def read_few_shot(path: Path) -> list[list[Message]]:
    """A few-shot file: Anthropic's transcripts (JSON list of strings, or text) as chats."""
    import json

    if not path.is_file():
        raise AlignlabError(f"Few-shot file '{path}' was not found. Set constitution."
                            "few_shot_path to an existing file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AlignlabError(f"Few-shot file '{path}' is not UTF-8 text.") from None
    texts: Any = [text]
    if path.suffix == ".json" or text.lstrip().startswith(("[", "{", '"')):
        try:
            texts = json.loads(text)
        except json.JSONDecodeError as err:
            raise AlignlabError(f"Few-shot file '{path}' is not valid JSON (line {err.lineno}): "
                                f"{err.msg}.") from None
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, Mapping):
            texts = list(texts.values())
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise AlignlabError(f"Few-shot file '{path}' must hold a JSON list of transcript "
                                "strings ('Human: ... Assistant: ... CritiqueRequest: ... "
                                "Critique: ... RevisionRequest: ... Revision: ...'), as "
                                "Anthropic's CritiqueRevisionFewShotPrompts.json does.")
    return parse_transcripts(texts, str(path))


def read_file(path: Path) -> dict[str, Any]:
    """A constitution file (YAML or JSON) as a mapping."""
    import yaml

    if not path.is_file():
        raise AlignlabError(f"Constitution file '{path}' was not found. Set constitution.path "
                            "to an existing .yaml/.json file, or pick constitution=harmless.")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            import json

            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise AlignlabError(f"Constitution file '{path}' is not valid JSON (line "
                                    f"{err.lineno}): {err.msg}. Fix the file's syntax.") from None
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise AlignlabError(f"Constitution file '{path}' is not valid YAML{line}: "
                            f"{getattr(err, 'problem', None) or err}. Fix the file's "
                            "syntax.") from None
    if is_anthropic_instructions(data):
        return from_anthropic(data, str(path))
    if isinstance(data, list) and data and all(isinstance(t, str) for t in data) \
            and any("CritiqueRequest:" in t for t in data):
        raise AlignlabError(f"Constitution file '{path}' holds few-shot transcripts, not "
                            "principles. Set constitution.few_shot_path to it, and "
                            f"constitution.path to the principles: {_OWN_LAYOUT}, or "
                            f"{_ANTHROPIC_LAYOUT}.")
    if not isinstance(data, dict):
        raise AlignlabError(f"Constitution file '{path}' holds a {type(data).__name__}, not a "
                            f"layout alignlab reads. Expected {_OWN_LAYOUT}, or "
                            f"{_ANTHROPIC_LAYOUT}.")
    if not any(k in data for k in ("principles", "constitutions")) \
            and any(isinstance(v, Mapping) for v in data.values()):
        raise AlignlabError(f"Constitution file '{path}' is not in a layout alignlab reads "
                            f"(keys {sorted(data)[:5]}). Expected {_OWN_LAYOUT}, or "
                            f"{_ANTHROPIC_LAYOUT}.")
    return data


def parse(data: Mapping[str, Any], *, source: str = "constitution",
          need_choice: bool = False) -> Constitution:
    """Validate a constitution mapping (see the module docstring for its keys)."""
    data = {_ALIASES.get(k, k): v for k, v in data.items()}
    for key in data:
        if key not in _KEYS:
            raise AlignlabError(f"'{key}' in {source} is not a constitution key."
                                f"{did_you_mean(key, _KEYS)}")
    raw = data.get("principles")
    if not isinstance(raw, list) or not raw:
        raise AlignlabError(f"{source} has no principles. Add a non-empty 'principles' list of "
                            "{critic, revision, choice} entries.")
    principles = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, Mapping):
            raise AlignlabError(f"Principle {i} in {source} is not a mapping. Write it as "
                                "{critic: ..., revision: ..., choice: ...}.")
        for key in item:
            if key not in ("critic", "revision", "choice"):
                raise AlignlabError(f"Principle {i} in {source} has an unknown key '{key}'."
                                    f"{did_you_mean(key, ('critic', 'revision', 'choice'))}")
        for key in ("critic", "revision"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise AlignlabError(f"Principle {i} in {source} is missing '{key}' (a non-empty "
                                    "string). Every principle needs a critic and a revision "
                                    "request.")
        choice = item.get("choice")
        if need_choice and (not isinstance(choice, str) or not choice.strip()):
            raise AlignlabError(f"Principle {i} in {source} has no 'choice' question, which "
                                "method=judge asks the judge. Add e.g. choice: 'Which response "
                                "is less harmful?'.")
        principles.append(Principle(item["critic"].strip(), item["revision"].strip(),
                                    choice.strip() if isinstance(choice, str) else None))
    few_shot = tuple(_chat(chat, i, source) for i, chat in
                     enumerate(data.get("few_shot") or [], 1))
    template = data.get("judge_template") or DEFAULT_JUDGE_TEMPLATE
    _check_template(template, source)
    prefix = data.get("judge_prefix")
    return Constitution(name=str(data.get("name") or Path(source).stem),
                        principles=tuple(principles), few_shot=few_shot,
                        judge_template=template,
                        judge_prefix=DEFAULT_JUDGE_PREFIX if prefix is None else str(prefix))


def _chat(chat: Any, i: int, source: str) -> tuple[Message, ...]:
    if not isinstance(chat, list) or not chat:
        raise AlignlabError(f"Few-shot chat {i} in {source} is not a non-empty list of "
                            "{role, content} messages.")
    out = []
    for m in chat:
        if not isinstance(m, Mapping) or m.get("role") not in _ROLES \
                or not isinstance(m.get("content"), str):
            raise AlignlabError(f"Few-shot chat {i} in {source} has a bad message {m!r}. Each "
                                "message needs a role (system, user or assistant) and a text "
                                "content.")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise AlignlabError(f"Few-shot chat {i} in {source} must end with an assistant message "
                            "(the example revision).")
    return tuple(out)


def _check_template(template: Any, source: str) -> None:
    fields = {"conversation": "", "prompt": "", "question": "", "a": "", "b": ""}
    try:
        text = str(template)
        text.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise AlignlabError(f"judge_template in {source} is not a valid template ({err!r}). "
                            "Use only the fields {conversation}, {prompt}, {question}, {a}, {b} "
                            "(write literal braces as {{ and }}).") from None
    missing = [f for f in ("{a}", "{b}", "{question}") if f not in text]
    if missing or ("{conversation}" not in text and "{prompt}" not in text):
        raise AlignlabError(f"judge_template in {source} lacks {missing or ['{conversation}']}. "
                            "It must show the conversation, the question and both options.")


def _plain(spec: Any) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(spec):
            return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(spec)


# ---------------------------------------------------------------------------------------------
# Prompt construction


def rng_for(seed: int, key: str) -> random.Random:
    """A random source for one row, so its principles don't depend on batching or resumes."""
    return random.Random(f"{seed}:{key}")


def sample_principles(constitution: Constitution, rng: random.Random, n: int) -> list[Principle]:
    """``n`` principles drawn at random (with replacement, as in the paper)."""
    return [rng.choice(constitution.principles) for _ in range(n)]


def few_shot_messages(constitution: Constitution, num: int | None = None) -> list[Message]:
    """The few-shot chats flattened into one message list (all, or the first ``num``)."""
    chats = constitution.few_shot if num is None else constitution.few_shot[:num]
    return [dict(m) for chat in chats for m in chat]


def initial_conversation(few_shot: Sequence[Message],
                         prompt: Sequence[Message]) -> list[Message]:
    """What the model answers first: the few-shot chats, then the red-team prompt."""
    return [*few_shot, *prompt]


def critique_conversation(few_shot: Sequence[Message], prompt: Sequence[Message],
                          response: str, principle: Principle) -> list[Message]:
    """The critique request, after the prompt and the current response."""
    return [*few_shot, *prompt, {"role": "assistant", "content": response},
            {"role": "user", "content": principle.critic}]


def revision_conversation(few_shot: Sequence[Message], prompt: Sequence[Message],
                          response: str, principle: Principle,
                          critique: str) -> list[Message]:
    """The revision request, after the critique."""
    return [*critique_conversation(few_shot, prompt, response, principle),
            {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision}]


def format_conversation(prompt: Sequence[Message]) -> str:
    """A conversation as the judge reads it: "Human: ..." / "Assistant: ..." paragraphs."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


def last_user_text(prompt: Sequence[Message]) -> str:
    """The text of the last user turn (the ``prompt`` string of the CAI dataset)."""
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def judge_conversation(constitution: Constitution, prompt: Sequence[Message], a: str, b: str,
                       question: str, *, chain_of_thought: bool = False) -> list[Message]:
    """The judge's request: the conversation, the principle's question, options (A) and (B)."""
    text = constitution.judge_template.format(
        conversation=format_conversation(prompt), prompt=last_user_text(prompt),
        question=question, a=a, b=b)
    if chain_of_thought:
        text = f"{text}\n\n{COT_REQUEST}"
    return [{"role": "user", "content": text}]


def judge_query(constitution: Constitution, prompt: Sequence[Message], a: str, b: str,
                question: str, reasoning: str | None = None) -> tuple[list[Message], str]:
    """(conversation, answer prefix) whose next token the judge's label is read from.

    With chain-of-thought ``reasoning``, the judge's reasoning is its first turn and a short
    follow-up asks for the letter.
    """
    conv = judge_conversation(constitution, prompt, a, b, question,
                              chain_of_thought=reasoning is not None)
    if reasoning is not None:
        conv += [{"role": "assistant", "content": reasoning},
                 {"role": "user", "content": COT_ANSWER}]
    return conv, constitution.judge_prefix


def judge_sft_rows(pairs: Sequence[Mapping[str, Any]], constitution: Constitution,
                   seed: int) -> list[dict[str, Any]]:
    """SFT rows that teach a model to answer the judge's question, from labelled pairs.

    For distilling a judge from preference data you trust (e.g. human labels): each pair
    appears in both orders with a sampled principle, so the learned judge has no position bias.
    Rows are ``{"messages": [...]}`` (the judge's request, then prefix + letter + ")").
    """
    rows = []
    for i, pair in enumerate(pairs):
        rng = rng_for(seed, f"judge-sft-{i}")
        good, bad = _reply(pair["chosen"]), _reply(pair["rejected"])
        for first_good in (True, False):
            (principle,) = sample_principles(constitution, rng, 1)
            a, b = (good, bad) if first_good else (bad, good)
            conv, prefix = judge_query(constitution, list(pair["prompt"]), a, b,
                                       principle.choice or principle.critic)
            letter = "A" if first_good else "B"
            rows.append({"messages": [*conv, {"role": "assistant",
                                              "content": f"{prefix}{letter})"}]})
    return rows


def _reply(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "".join(m["content"] for m in value if m["role"] == "assistant")
