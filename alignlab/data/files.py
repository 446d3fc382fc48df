"""Opening what ``data.path`` names: a local .json/.jsonl/.parquet file (plain or compressed),
a folder of them (the hub repo layout), a ``save_to_disk`` folder, or a hub id; and checking
local files before anything trains (:func:`check_files`: a broken line, a file that is not
UTF-8, a truncated archive, each named with its line).
"""


from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from alignlab import runs
from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

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


def open_source(path: Any, subset: str | None, data_dir: str | None) -> _Source:
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


