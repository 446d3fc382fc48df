"""Dataset presets: hub datasets and local files, converted to TRL's conversational formats.

Every loaded dataset ends up in one of four *kinds* (the columns TRL's trainers read):

- ``sft``      -> ``messages``: a conversation (system/user/assistant) ending with an assistant
  turn;
- ``pairs``    -> ``prompt`` (ends with a user turn), ``chosen``, ``rejected`` (one assistant
  message each): TRL's explicit-prompt conversational preference format;
- ``unpaired`` -> ``prompt``, ``completion`` (one assistant message), ``label`` (bool): KTO's
  format;
- ``prompts``  -> ``prompt`` (ends with a user turn): for PPO/GRPO/RLOO/CAI generation.

``data.format`` says how the source is laid out (see :data:`FORMATS`): ``hh-rlhf`` (Anthropic's
"\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts), ``ultrafeedback`` and ``cai`` (the H4
datasets), or ``trl`` (any file already in a TRL format, conversational or plain strings).
Malformed rows (no assistant reply, empty reply, identical chosen and rejected, ...) are dropped
and counted in a warning; an empty result is an error.

Importing this module is cheap: ``datasets`` is imported only when something is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from alignlab import runs
from alignlab.errors import AlignlabError, did_you_mean

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

KINDS = ("sft", "pairs", "unpaired", "prompts")
TEST_FRACTION = 0.05  # share of the train split carved off when a dataset has no test split

Message = dict[str, str]
Row = dict[str, Any]
RowConverter = Callable[[Mapping[str, Any]], list[Row]]

_ROLES = ("system", "user", "assistant")
# Other datasets' names for the same roles (ShareGPT, Gemini, OpenAI).
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                 "developer": "system"}
_MISSING = "???"  # Hydra's mandatory-value marker


class _Skip(Exception):  # an internal signal, never raised to the user: the row is dropped
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
        raise _Skip("empty or non-list conversation")
    out = []
    for m in value:
        if not isinstance(m, Mapping):
            raise _Skip("message is not a {role, content} mapping")
        role = m.get("role") if m.get("role") is not None else m.get("from")
        content = m.get("content") if m.get("content") is not None else m.get("value")
        role = _ROLE_ALIASES.get(str(role).lower(), str(role).lower())
        if role not in _ROLES:
            raise _Skip(f"unsupported role {role!r}")
        if not isinstance(content, str):
            raise _Skip("message content is not text")
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt or prompt[-1]["role"] != "user":
        raise _Skip("prompt does not end with a user turn")
    if not prompt[-1]["content"].strip():
        raise _Skip("empty user turn")
    return prompt


def _split_last(conv: list[Message]) -> tuple[list[Message], list[Message]]:
    """(prompt, [final assistant message]) of a conversation that ends with a non-empty reply."""
    if not conv or conv[-1]["role"] != "assistant":
        raise _Skip("no final assistant reply")
    if not conv[-1]["content"].strip():
        raise _Skip("empty final reply")
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
        raise _Skip("chosen and rejected have different prompts")
    if good == bad:
        raise _Skip("chosen and rejected are identical")
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
        raise _Skip("transcript is not a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise _Skip("text before the first 'Human:' turn")
    if len(parts) < 3:
        raise _Skip("no 'Human:' or 'Assistant:' turn")
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
            raise _Skip("no final assistant reply")
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
            raise _Skip("chosen and rejected share no prompt")
        p = _messages(shared, "user")
        return (p + _messages(chosen[len(shared):], "assistant"),
                p + _messages(rejected[len(shared):], "assistant"))
    return _messages(chosen, "assistant"), _messages(rejected, "assistant")


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Skip("label is not a boolean")


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
            raise _Skip("label False (not a demonstration)")
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
# Loading


def _get(data: Mapping[str, Any], key: str) -> Any:
    """``data[key]``, with missing keys, None and Hydra's unset '???' all read as None."""
    try:
        value = data.get(key)
    except Exception as e:  # omegaconf's MissingMandatoryValue, without importing omegaconf
        if type(e).__name__ == "MissingMandatoryValue":
            return None
        raise
    return None if value == _MISSING else value


def _hub_error(path: str, err: Exception) -> AlignlabError:
    return AlignlabError(
        f"Dataset '{path}' could not be fetched because the Hugging Face Hub isn't reachable "
        f"({type(err).__name__}), and it isn't a local folder either. Download the dataset on a "
        f"machine with internet access (e.g. `hf download --repo-type dataset {path} "
        "--local-dir DIR`) and set data.path to that local folder.")


def _is_network_error(err: BaseException) -> bool:
    # datasets wraps most network failures in ConnectionError; huggingface_hub and httpx have
    # their own classes (LocalEntryNotFoundError is even a FileNotFoundError).
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(names & {
        "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout",
        "ReadTimeout", "TimeoutException", "NetworkError"})


def _open_error(err: Exception, path: str, where: str, subset: str | None,
                data_dir: str | None, local: bool) -> Exception:
    """The AlignlabError for a dataset folder or hub id that datasets could not open."""
    if not local and _is_network_error(err):
        return _hub_error(path, err)
    if type(err).__name__ == "DatasetNotFoundError":
        return AlignlabError(
            f"Dataset '{path}' was not found on the Hugging Face Hub (or it is gated and you are "
            "not logged in). Check data.path, or run `hf auth login` for a gated dataset.")
    if isinstance(err, FileNotFoundError):  # includes datasets' EmptyDatasetError
        under = f" under data_dir '{data_dir}'" if data_dir else ""
        return AlignlabError(
            f"No data files found in '{where}'{under}. Point data.path (and data.data_dir) at a "
            "folder holding .json/.jsonl/.parquet files or a save_to_disk dataset.")
    if isinstance(err, ValueError) and subset is not None:  # "BuilderConfig 'x' not found..."
        return AlignlabError(f"Dataset '{path}' has no subset '{subset}' ({err}). Set "
                             "data.subset to one of its configs, or null.")
    return err


@dataclass(frozen=True)
class _Source:
    label: str  # for messages
    splits: list[str]
    load: Callable[[str], datasets.Dataset]


# Compressed data files whose integrity the standard library can check: suffix -> (format, the
# command-line tool that tests a file). datasets decompresses these (and .zst) itself.
_COMPRESSION = {".gz": ("gzip", "gzip"), ".bz2": ("bzip2", "bzip2"), ".xz": ("xz", "xz")}
_READ_TYPES = {".json", ".jsonl", ".parquet"}  # what alignlab reads, plain or compressed
# Tabular files datasets would load from a folder (or skip beside JSON/Parquet files) that
# alignlab refuses when named directly; a folder of them is refused the same way.
_SKIPPED_TYPES = {".csv", ".tsv", ".arrow"}
_warned_skips: set[str] = set()  # folders whose skipped files were already named in a warning
_told_carves: set[tuple[str, str, str]] = set()  # (data, kind, split): test carving already said


def _opener(p: Path) -> Callable[[], IO[bytes]]:
    """A function that opens ``p`` for reading its bytes, decompressed where it is compressed."""
    if p.suffix == ".gz":
        import gzip

        return lambda: gzip.open(p, "rb")
    if p.suffix == ".bz2":
        import bz2

        return lambda: bz2.open(p, "rb")
    if p.suffix == ".xz":
        import lzma

        return lambda: lzma.open(p, "rb")
    return lambda: p.open("rb")


def _decompress_errors() -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt gzip/bzip2/xz stream raises while it is read."""
    import lzma
    import zlib

    # EOFError: the stream ends early; OSError: gzip's BadGzipFile (bad header, CRC or length)
    # and bzip2's "Invalid data stream"; zlib.error and LZMAError: corrupt compressed data.
    return EOFError, OSError, zlib.error, lzma.LZMAError


def _corrupt(p: Path, err: BaseException) -> AlignlabError:
    kind, tool = _COMPRESSION[p.suffix]
    reason = " ".join(str(err).split()) or type(err).__name__
    return AlignlabError(
        f"Dataset file '{p}' is a truncated or corrupt {kind} file ({reason}). Download it "
        f"again, or compress it again from the original file (`{tool} -t {p.name}` tests it).")


def _unsupported(p: Path) -> AlignlabError:
    """The refusal of a data file alignlab does not read (named directly or in a folder)."""
    return AlignlabError(f"Dataset file '{p}' has an unsupported type '{p.suffix}'. Use a "
                         ".json, .jsonl or .parquet file (or a folder of them).")


def _data_suffix(p: Path) -> str:
    """The suffix that says what ``p`` holds: '.jsonl' for both d.jsonl and d.jsonl.gz."""
    return Path(p.stem).suffix if p.suffix in _COMPRESSION or p.suffix == ".zst" else p.suffix


def _is_blank(p: Path, probe: int = 1 << 16) -> bool:
    """True for an empty or whitespace-only file (only a small file is read in full)."""
    with _opener(p)() as f:
        head = f.read(probe)
        more = f.read(1) if not head.strip() and p.suffix in _COMPRESSION else b""
    return not head.strip() and not more and (p.suffix in _COMPRESSION
                                              or p.stat().st_size <= probe)


def _folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The data files in ``folder`` as datasets finds them (hidden and ``__`` folders and files
    left out, metadata files aside): those alignlab reads, and the tabular ones it does not."""
    read: list[Path] = []
    skipped: list[Path] = []
    for f in sorted(folder.rglob("*")):
        if f.name in _METADATA or any(part.startswith((".", "__"))
                                      for part in f.relative_to(folder).parts):
            continue
        suffixes = set(f.suffixes)
        if not f.is_file():
            continue
        if suffixes & _READ_TYPES:
            read.append(f)
        elif suffixes & _SKIPPED_TYPES:
            skipped.append(f)
    return read, skipped


def _read_error(where: Any, builder: str, err: Exception) -> AlignlabError:
    path = Path(str(where))
    # pyarrow reports a character position, gzip a bare "ended before the end-of-stream
    # marker"; a scan names the file and the line the user can open.
    if builder == "json" and path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = [f for f in _folder_files(path)[0] if ".parquet" not in f.suffixes]
    else:
        candidates = []
    for f in candidates[:1000]:
        try:
            _scan_json(f, parse=True)
        except AlignlabError as located:
            return located
    cause = err.__cause__ or err  # datasets wraps the parser's error in DatasetGenerationError
    text = " ".join(str(cause).split())  # one line, whatever the parser printed
    return AlignlabError(
        f"Could not read '{where}' as {builder}: {type(cause).__name__}: {text}. Check that the "
        "data files are valid (JSON Lines or a JSON list of objects, or Parquet).")


@contextlib.contextmanager
def _quiet_json_builder() -> Iterator[None]:
    """datasets' JSON builder logs its parse error as well as raising it: a second console
    line, and one without a line number. The error is raised (and located) all the same."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# A row is one line of JSON Lines. Longer than this is no training example (1 MiB of text is
# about 250k tokens, beyond the context of the models alignlab trains) but a broken export, which
# the trainer would tokenize and truncate for minutes without a word.
MAX_LINE_BYTES = 1 << 20
# Files up to this size are parsed line by line up front (a second or so at most); larger ones
# get the cheap byte checks here and are parsed by datasets.
PARSE_UP_FRONT_BYTES = 64 << 20
# Compressed files expand (text about 5-10x): up to this size they are decompressed and parsed up
# front, up to PARSE_UP_FRONT_BYTES decompressed to check their integrity only.
PARSE_COMPRESSED_BYTES = PARSE_UP_FRONT_BYTES // 8
_METADATA = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"}


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null", dict: "object"
            }.get(type(value), "number")


def _is_json(text: str) -> bool:
    import json

    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _element_line(text: str, index: int) -> int:
    """The line on which element ``index`` of the JSON array ``text`` starts."""
    import json

    decoder = json.JSONDecoder()
    separators = re.compile(r"[\s,]*")
    pos = text.index("[") + 1
    for _ in range(index):
        pos = separators.match(text, pos).end()
        _, pos = decoder.raw_decode(text, pos)
    pos = separators.match(text, pos).end()
    return text.count("\n", 0, pos) + 1


def _scan_json(p: Path, *, parse: bool) -> None:
    """Refuse a JSON/JSON Lines file (plain or gzip/bzip2/xz) that is not UTF-8, has an
    absurdly long line, is a truncated or corrupt archive, or (with ``parse``) has a line that
    is not a JSON object, naming the line."""
    if p.suffix not in _COMPRESSION:
        _scan_json_bytes(p, _opener(p), parse=parse)
        return
    try:
        _scan_json_bytes(p, _opener(p), parse=parse)
    except _decompress_errors() as err:
        raise _corrupt(p, err) from None


def _check_stream(p: Path) -> None:
    """Decompress ``p`` to its end: a truncated or corrupt archive is refused."""
    try:
        with _opener(p)() as f:
            while f.read(1 << 22):
                pass
    except _decompress_errors() as err:
        raise _corrupt(p, err) from None


def _scan_json_bytes(p: Path, open_bytes: Callable[[], IO[bytes]], *, parse: bool) -> None:
    import json

    with open_bytes() as f:
        head = f.read(1 << 16).lstrip()
    # A .json file is one JSON document (a list of rows, or a mapping of columns) or JSON Lines.
    if _data_suffix(p) == ".json" and head.startswith((b"[", b"{")):
        if not parse:
            if head.startswith(b"["):
                return  # a large single document: datasets parses it
        else:
            with open_bytes() as f:
                blob = f.read()
            try:
                text = blob.decode("utf-8")
            except UnicodeDecodeError as err:
                line = blob[:err.start].count(b"\n") + 1
                raise AlignlabError(f"Dataset file '{p}' is not UTF-8 text (line {line} has the "
                                    f"byte 0x{blob[err.start]:02x}). Re-save it as UTF-8 "
                                    "(e.g. `iconv -f latin1 -t utf-8`).") from None
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as err:
                if head.startswith(b"[") or not _is_json(text.lstrip().partition("\n")[0]):
                    # one document (a list, or an object over several lines), not JSON Lines
                    raise AlignlabError(f"Dataset file '{p}' is not valid JSON: line "
                                        f"{err.lineno}, column {err.colno}: {err.msg}. Fix "
                                        "that line.") from None
            else:
                # Rows are objects; a list of plain values is read as one 'text' column.
                if isinstance(doc, list) and any(isinstance(row, dict) for row in doc):
                    bad = next((i for i, row in enumerate(doc) if not isinstance(row, dict)),
                               None)
                    if bad is not None:
                        raise AlignlabError(
                            f"Dataset file '{p}': line {_element_line(text, bad)} holds a JSON "
                            f"{_json_type(doc[bad])} where the list has rows (objects), "
                            f"element {bad + 1} of {len(doc)}. Make it an object or remove it.")
                return
            # not one document: JSON Lines in a .json file, checked line by line below

    with open_bytes() as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise AlignlabError(
                    f"Dataset file '{p}': line {lineno} is longer than "
                    f"{MAX_LINE_BYTES >> 20} MiB, far beyond any model's context; the file is "
                    "probably not JSON Lines (one row per line) or holds a broken row. Fix or "
                    "remove that line.")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise AlignlabError(f"Dataset file '{p}' is not UTF-8 text: line {lineno}, "
                                    f"byte {err.start + 1} is 0x{raw[err.start]:02x}. Re-save "
                                    "the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
                                    ) from None
            if parse and line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise AlignlabError(
                        f"Dataset file '{p}': line {lineno} is not valid JSON (column "
                        f"{err.colno}: {err.msg}). JSON Lines needs one complete object per "
                        "line; fix that line.") from None
                if not isinstance(row, dict):
                    raise AlignlabError(
                        f"Dataset file '{p}': line {lineno} is a JSON {_json_type(row)}, not "
                        "an object. JSON Lines needs one object (a row, {\"column\": value, "
                        "...}) per line; fix that line.")


def _check_file(p: Path) -> None:
    suffixes = p.suffixes
    if ".parquet" in suffixes:
        if p.suffix == ".parquet":
            size = p.stat().st_size
            with p.open("rb") as f:
                head = f.read(4)
                f.seek(max(size - 4, 0))
                tail = f.read(4)
            if size == 0:
                raise AlignlabError(f"Dataset file '{p}' is empty. Point data.path at a file "
                                    "with at least one row.")
            if head != b"PAR1" or tail != b"PAR1":
                raise AlignlabError(f"Dataset file '{p}' is not a Parquet file (no PAR1 "
                                    "header and footer; truncated or renamed?). Re-export it, "
                                    "or use .jsonl.")
        return
    if ".json" not in suffixes and ".jsonl" not in suffixes:
        raise _unsupported(p)
    if p.suffix in _COMPRESSION and _data_suffix(p) in (".json", ".jsonl"):
        size = p.stat().st_size
        if size > PARSE_UP_FRONT_BYTES:
            return  # large: datasets decompresses it; a read error is located then
        try:
            blank = _is_blank(p)
        except _decompress_errors() as err:
            raise _corrupt(p, err) from None
        if blank:
            raise AlignlabError(f"Dataset file '{p}' is empty once decompressed. Point "
                                "data.path at a file with at least one row.")
        if size <= PARSE_COMPRESSED_BYTES:
            _scan_json(p, parse=True)  # decompressed as it is read: a truncated one is refused
        else:
            _check_stream(p)
        return
    if p.suffix not in (".json", ".jsonl"):
        return  # compressed another way (.zst, ...): datasets decompresses and parses it
    if _is_blank(p):
        raise AlignlabError(f"Dataset file '{p}' is empty. Point data.path at a file with "
                            "at least one row.")
    _scan_json(p, parse=p.stat().st_size <= PARSE_UP_FRONT_BYTES)


def check_config(data: Mapping[str, Any], pending: Collection[str] = ()) -> None:
    """The local files ``data.path`` (in ``data.data_dir`` of a folder) names pass
    :func:`check_files`, unless an earlier stage of a recipe will write them (``pending``)."""
    path = data.get("path")
    if path in pending:
        return
    root = Path(str(path)).expanduser()
    check_files(root / data["data_dir"] if data.get("data_dir") and root.is_dir() else path)


def check_files(path: Any) -> None:
    """Cheap checks of a local data file or folder before anything is imported or created:
    supported type, not empty, UTF-8, JSON that parses (naming the bad line), sane line
    lengths, complete gzip/bzip2/xz archives, Parquet magic; a folder whose only data files
    are of a type alignlab does not read (.csv, ...) is refused like such a file named
    directly. Hub ids and missing paths that do not look local pass."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        return
    p = Path(str(path)).expanduser()
    if not p.exists():
        if runs.looks_local(str(path)):
            raise AlignlabError(
                f"Dataset path '{path}' does not exist. Set data.path to a local "
                ".json/.jsonl/.parquet file or folder, or a Hugging Face dataset id.")
        return
    if p.is_file():
        _check_file(p)
        return
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        return  # a save_to_disk folder: Arrow files datasets wrote itself
    files, skipped = _folder_files(p)
    if skipped and not files:
        raise _unsupported(skipped[0])
    for f in files[:1000]:
        _check_file(f)


def _open_local_file(p: Path) -> _Source:
    # The config validation ran the same checks (check_files); callers that load a file
    # directly get them here.
    _check_file(p)
    builder = "parquet" if ".parquet" in p.suffixes else "json"

    def load(split: str) -> datasets.Dataset:
        import datasets

        try:
            with _quiet_json_builder():
                return datasets.load_dataset(builder, data_files={"train": str(p)}, split=split)
        except Exception as e:  # any failure here means the file can't be read as `builder`
            raise _read_error(p, builder, e) from e

    return _Source(str(p), ["train"], load)


def _skipped_files(folder: Path) -> str | None:
    """For a local data folder: None when every data file in it is read, else the builder
    (json or parquet) that reads the ones alignlab supports while the others are skipped, with
    one warning naming them. A folder of only unsupported files is refused."""
    if not folder.is_dir():
        return None
    files, skipped = _folder_files(folder)
    if not skipped:
        return None
    if not files:
        raise _unsupported(skipped[0])
    key = str(folder.resolve())
    if key not in _warned_skips:
        _warned_skips.add(key)
        names = ", ".join(str(f.relative_to(folder)) for f in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("Skipping %d file(s) in data folder '%s' that alignlab does not read: %s%s "
                    "(only .json, .jsonl and .parquet files are loaded; convert them to .jsonl "
                    "to use them).", len(skipped), folder, names, more)
    return "parquet" if all(".parquet" in f.suffixes for f in files) else "json"


def _open_folder_or_hub(path: str, subset: str | None, data_dir: str | None,
                        local: bool) -> _Source:
    import datasets

    p = Path(path).expanduser()
    if local and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        saved = datasets.load_from_disk(str(p))  # a save_to_disk folder
        parts = saved if isinstance(saved, datasets.DatasetDict) else {"train": saved}
        return _Source(str(p), list(parts), lambda split: parts[split])
    where = str(p) if local else path
    # datasets picks a folder's builder by its most common file type (CSV when the .csv files
    # outnumber the .jsonl ones); with files alignlab skips beside the others, name the builder.
    reader = _skipped_files(p / data_dir if data_dir else p) if local else None
    source, kwargs = (reader, {"data_dir": str(p / data_dir if data_dir else p)}) \
        if reader and subset is None else (where, {"name": subset, "data_dir": data_dir})
    try:
        builder = datasets.load_dataset_builder(source, **kwargs)
    except Exception as e:
        mapped = _open_error(e, path, where, subset, data_dir, local)
        if mapped is e:
            raise
        raise mapped from e
    files = builder.config.data_files
    names = [str(s) for s in (files or builder.info.splits or {})]

    def load(split: str) -> datasets.Dataset:
        try:
            with _quiet_json_builder():
                return datasets.load_dataset(source, split=split, **kwargs)
        except Exception as e:
            if local:  # a local folder whose files can't be parsed
                raise _read_error(where, "a dataset folder", e) from e
            if _is_network_error(e):
                raise _hub_error(path, e) from e
            raise

    return _Source(where, names, load)


def _open(path: Any, subset: str | None, data_dir: str | None) -> _Source:
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise AlignlabError("data.path is not set. Set data.path to a local .json/.jsonl/.parquet "
                            "file or folder, or a Hugging Face dataset id.")
    path = str(path)
    p = Path(path).expanduser()
    if p.is_file():
        return _open_local_file(p)
    if p.is_dir():
        return _open_folder_or_hub(path, subset, data_dir, local=True)
    if runs.looks_local(path):
        raise AlignlabError(
            f"Dataset path '{path}' does not exist. Set data.path to a local .json/.jsonl/.parquet "
            "file or folder, or a Hugging Face dataset id.")
    return _open_folder_or_hub(path, subset, data_dir, local=False)


def _choose(names: Sequence[str], explicit: str | None, candidates: Sequence[str], key: str,
            label: str) -> str | None:
    if explicit is not None:
        if explicit in names:
            return explicit
        raise AlignlabError(
            f"Split '{explicit}' is not in dataset '{label}' (available: {', '.join(names)}). "
            f"Set data.{key} to one of the available splits.{did_you_mean(explicit, names)}")
    return next((c for c in candidates if c in names), None)


def _carve(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (train, test) row indices: a seeded TEST_FRACTION of the rows go to test."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(n * TEST_FRACTION)) if n > 1 else 0
    return sorted(order[n_test:]), sorted(order[:n_test])


def _features(kind: str) -> datasets.Features:
    import datasets

    msgs = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    cols = {"sft": ("messages",), "pairs": ("prompt", "chosen", "rejected"),
            "unpaired": ("prompt", "completion"), "prompts": ("prompt",)}[kind]
    feats = dict.fromkeys(cols, msgs)
    if kind == "unpaired":
        feats["label"] = datasets.Value("bool")
    return datasets.Features(feats)


def _iter_rows(ds: datasets.Dataset, batch_size: int = 1000) -> Iterable[dict[str, Any]]:
    """Rows as dicts, read a batch at a time (row-by-row access is several times slower)."""
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(keys, values, strict=True))


# Columns of the user's data kept beside a kind's own, as strings (``data.columns`` maps other
# names to them, e.g. RewardBench's subset to category): evaluation reports per category, and
# over-refusal needs each prompt's safe/unsafe mark.
PASSTHROUGH = ("category", "safety")


def _to_dataset(rows: list[Row], kind: str, extra: Sequence[str] = ()) -> datasets.Dataset:
    """The converted rows as a Dataset, built column-wise in Arrow (from_list encodes row by row,
    which dominated loading time on hh-rlhf)."""
    import datasets
    import pyarrow as pa

    features = _features(kind)
    for name in extra:
        features[name] = datasets.Value("string")
    schema = features.arrow_schema
    columns = {name: pa.array([r[name] for r in rows], type=schema.field(name).type)
               for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def _positive_int(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1:
        raise AlignlabError(f"data.max_samples is {value!r}. Set it to a positive number of "
                            "rows, or null for all rows.")
    return n


def load_preset(data: Mapping[str, Any], kind: str, split: str = "train") -> datasets.Dataset:
    """Load the dataset described by ``data`` for ``split`` ("train" or "test") as ``kind`` rows.

    ``data`` is the Hydra ``data`` group (name, format, path, subset, data_dir, train_split,
    test_split, max_samples, seed; any may be None; format None means "trl"). ``path`` is a
    local .json/.jsonl/.parquet file, a folder of them (hub repo layout, data_dir honoured), a
    save_to_disk folder, or a hub id. Splits default per format and kind (e.g.
    train_prefs/test_prefs for ultrafeedback pairs); a dataset without a test split gets a seeded
    5 % of its train split carved off (train then excludes those rows). ``max_samples`` caps the
    rows of either split after a seeded shuffle. Raises AlignlabError for user mistakes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    fmt = _get(data, "format") or "trl"  # unset format: files already in a TRL format
    if fmt not in FORMATS:
        raise AlignlabError(f"Unknown data.format '{fmt}'. Set data.format to one of the "
                            f"presets.{did_you_mean(str(fmt), FORMATS)}")
    preset = FORMATS[fmt]
    seed = int(_get(data, "seed") or 0)
    max_samples = _get(data, "max_samples")
    if max_samples is not None:
        max_samples = _positive_int(max_samples)

    source = _open(_get(data, "path"), _get(data, "subset"), _get(data, "data_dir"))
    train_cands, test_cands = preset.splits[kind]
    train_name = _choose(source.splits, _get(data, "train_split"), train_cands, "train_split",
                         source.label)
    test_name = _choose(source.splits, _get(data, "test_split"), test_cands, "test_split",
                        source.label)
    # "all": every row of the train split, none held out (evaluating a benchmark file)
    carve = (test_name is None or test_name == train_name) and split != "all"
    if split == "test" and not carve:
        name = test_name
    elif train_name is not None:
        name = train_name
    else:
        raise MissingSplit(
            f"Dataset '{source.label}' has no train split for kind '{kind}' (looked for "
            f"{', '.join(train_cands)}; available: {', '.join(source.splits) or 'none'}). "
            "Set data.train_split to the split to train on.")

    raw = source.load(name)
    where = f"'{source.label}' split '{name}'"
    raw = map_columns(raw, _get(data, "columns") or {}, where)
    convert = preset.plan(raw.features, kind, fmt, where)  # checks columns before reading rows
    indices: list[int] | None = None
    if carve:
        train_idx, test_idx = _carve(len(raw), seed)
        indices = test_idx if split == "test" else train_idx
        if (source.label, kind, name) not in _told_carves:  # once, not per split loaded
            _told_carves.add((source.label, kind, name))
            log.info("%s has no %s split for '%s'; using a seeded %d%% of '%s' (%d rows) as "
                     "test.", source.label, "separate test" if test_name else "test", kind,
                     round(TEST_FRACTION * 100), name, len(test_idx))
    if max_samples is not None:
        indices = list(range(len(raw))) if indices is None else indices
        random.Random(seed).shuffle(indices)
    rows_in = _iter_rows(raw if indices is None else raw.select(indices, keep_in_memory=True))
    extra = [c for c in PASSTHROUGH if c in raw.column_names]

    rows: list[Row] = []
    dropped: Counter[str] = Counter()
    seen = 0
    for row in rows_in:
        if max_samples is not None and len(rows) >= max_samples:
            break
        seen += 1
        try:
            converted = convert(row)
        except _Skip as why:
            dropped[str(why)] += 1
            continue
        for out in converted:
            out.update({c: None if row[c] is None else str(row[c]) for c in extra})
        rows.extend(converted)
    if max_samples is not None:
        rows = rows[:max_samples]  # unpaired rows come two per pair

    where += f" ({split} part)" if carve else ""
    reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common())
    if dropped:
        log.warning("Dropped %d of %d rows of %s for kind '%s': %s.", sum(dropped.values()), seen,
                    where, kind, reasons)
    if not rows:
        detail = f"all {seen} rows were dropped: {reasons}" if seen else "it has no rows"
        raise AlignlabError(
            f"Dataset {where} has no usable rows for kind '{kind}' ({detail}). Point data.path "
            f"at a non-empty dataset in the '{fmt}' format ({preset.description}), or fix "
            "data.format.")
    return _to_dataset(rows, kind, extra)
