"""``python -m alignlab chat <run or folder>``: talk to a trained model, or script its answers.

- interactive (no ``--prompt``/``--file`` and stdin is a terminal): a ``you>`` prompt, multi-turn
  history (one per model when comparing), ``/reset``, ``/exit`` or Ctrl-D; Ctrl-C stops an
  answer and returns to the prompt;
- scripted (``--prompt``, ``--file`` or prompts piped on stdin): each prompt answered on its own,
  seeded, so the same command prints the same answers; ``--json`` gives one JSON line a prompt.

``--compare`` answers with a second model too, by default the run's starting model, with the
same settings. Answers use the tokenizer's chat template and stop at EOS or at the template's
end-of-turn token. Sampling: ``do_sample``/``temperature``/``top_p`` from the trained model's
``generation_config.json`` where it sets them, else temperature 0.7 and top_p 0.9; the options
override. Nothing else shapes the distribution (the model's top_k, repetition_penalty, ... are
not applied: see :func:`alignlab.generation.plain_sampling`). Notes go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab import generation, lengths, trained
from alignlab.errors import AlignlabError, CommandParser

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.7, 0.9
_START = "\0start"  # ``--compare`` without a value: the run's starting model
Conversation = list[dict[str, str]]

_EPILOG = """\
sampling: do_sample, temperature and top_p come from the model's generation_config.json where
it sets them, else temperature 0.7 and top_p 0.9 (sampling, not greedy); --greedy,
--temperature and --top-p override them. Scripted answers are seeded per prompt (--seed), so
they repeat; an interactive session is seeded once.

examples:
  python -m alignlab chat runs/sft                        talk to a run's model
  python -m alignlab chat runs/sft --compare              ... and to the model it started from
  python -m alignlab chat runs/dpo --compare runs/sft     ... or to another model
  python -m alignlab chat runs/sft --greedy --prompt "What is 2 plus 3?"
  python -m alignlab chat runs/sft --file prompts.jsonl --json > answers.jsonl

interactive commands: /reset clears the history, /exit (or Ctrl-D) quits, Ctrl-C stops an
answer."""


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m alignlab chat``."""
    p = CommandParser(prog="python -m alignlab chat", epilog=_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Talk to a trained model, or print its answers to prompts.")
    p.add_argument("path", nargs="?", help="a finished run directory, a recipe's stage "
                   "(<recipe dir>/<stage>), a model folder, a LoRA adapter or a GGUF file")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="answer TEXT and exit (repeatable)")
    p.add_argument("--file", metavar="F", help="answer each prompt of F and exit: one per line, "
                   "or JSONL with a \"prompt\" field (text or a list of messages); - is stdin")
    p.add_argument("--json", action="store_true", help="print one JSON line a prompt: "
                   "{\"prompt\", \"answer\"[, \"compare\"]}")
    p.add_argument("--compare", nargs="?", const=_START, metavar="OTHER",
                   help="answer with a second model too, side by side (default: the model the "
                   "run started from)")
    p.add_argument("--system", metavar="TEXT", help="a system message before every conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="longest answer in tokens (default: 256)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature "
                   "(0: greedy)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling's top_p")
    p.add_argument("--greedy", action="store_true", help="always the most likely next token")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype (default: float32 on the CPU, bfloat16 on a GPU)")
    return p


@dataclass(frozen=True)
class Sampling:
    """How answers are decoded."""

    do_sample: bool
    temperature: float
    top_p: float
    max_new_tokens: int
    source: str  # where the sampling settings came from, for the start line

    def describe(self) -> str:
        how = (f"temperature {self.temperature:g}, top_p {self.top_p:g}" if self.do_sample
               else "greedy")
        return f"{how} ({self.source}), up to {self.max_new_tokens} new tokens"


def model_defaults(source: Path | str) -> dict[str, Any]:
    """do_sample/temperature/top_p that the model's ``generation_config.json`` sets (local
    folder, or a hub model's cached copy), or {} when it has no such file."""
    local = Path(source) / "generation_config.json"
    if local.is_file():
        file: str | None = str(local)
    elif Path(source).exists():
        return {}
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(source), "generation_config.json")
        file = found if isinstance(found, str) else None
    if file is None:
        return {}
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in ("do_sample", "temperature", "top_p")
            if isinstance(data, dict) and data.get(k) is not None}


def sampling(args: argparse.Namespace, model: trained.Trained) -> Sampling:
    """The settings for ``args``: the command line over the model's defaults over 0.7/0.9."""
    if args.max_new_tokens < 1:
        raise AlignlabError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}.")
    if args.temperature is not None and args.temperature < 0:
        raise AlignlabError(f"--temperature must be 0 (greedy) or more, not {args.temperature}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise AlignlabError(f"--top-p must be in (0, 1], not {args.top_p}.")
    if args.greedy and args.temperature:
        raise AlignlabError("--greedy and --temperature contradict each other; give one.")
    found = model_defaults(model.model_dir)
    if not found and model.base is not None:
        found = model_defaults(model.base)
    source = "from generation_config.json" if found else "default"
    do_sample = bool(found.get("do_sample", True))
    temperature = float(found.get("temperature", DEFAULT_TEMPERATURE))
    top_p = float(found.get("top_p", DEFAULT_TOP_P))
    if args.greedy or args.temperature == 0:
        do_sample, source = False, "--greedy" if args.greedy else "--temperature 0"
    elif args.temperature is not None:
        do_sample, temperature, source = True, args.temperature, "command line"
    if args.top_p is not None:
        top_p, source = args.top_p, "command line"
    return Sampling(do_sample, temperature, top_p, args.max_new_tokens, source)


@dataclass
class Bot:
    """One model to talk to: its tokenizer, stop tokens, context size and history."""

    label: str
    where: trained.Trained
    model: Any
    tokenizer: Any
    stops: set[int]
    context: int | None
    history: Conversation = field(default_factory=list)

    def encode(self, conversation: Sequence[dict[str, str]]) -> Any:
        """The prompt's token ids (1 x n) through the chat template, ready for an answer."""
        text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False,
                                                  add_generation_prompt=True)
        enc = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        return enc["input_ids"].to(self.model.device)

    def answer(self, conversation: Sequence[dict[str, str]], how: Sampling,
               stream: bool = False) -> str:
        """The model's next turn in ``conversation`` (printed as it comes when ``stream``)."""
        import torch

        ids = self.encode(conversation)
        room = self.context - ids.shape[1] if self.context else how.max_new_tokens
        if room < 1:
            raise AlignlabError(f"The conversation is {ids.shape[1]} tokens, as long as "
                                f"{self.label}'s context of {self.context}; shorten it.")
        streamer = _streamer()(self.tokenizer, skip_prompt=True, skip_special_tokens=True) \
            if stream else None
        options = {**generation.NEUTRAL_SAMPLING, "do_sample": how.do_sample,
                   "temperature": how.temperature if how.do_sample else None,
                   "top_p": how.top_p if how.do_sample else 1.0}
        with torch.no_grad(), generation.plain_sampling(self.model):
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=min(how.max_new_tokens, room),
                                      eos_token_id=sorted(self.stops), streamer=streamer,
                                      pad_token_id=self.tokenizer.pad_token_id, **options)
        new = out[0, ids.shape[1]:].tolist()
        end = next((k for k, t in enumerate(new) if t in self.stops), len(new))
        return self.tokenizer.decode(new[:end], skip_special_tokens=True).strip()

    def fit(self, conversation: Conversation, how: Sampling) -> Conversation:
        """``conversation`` without its oldest exchanges until it and an answer fit the
        context (the system message and the last user turn stay)."""
        system = [m for m in conversation[:1] if m["role"] == "system"]
        turns = conversation[len(system):]
        while self.context and len(turns) > 1 and \
                self.encode(system + turns).shape[1] + how.max_new_tokens > self.context:
            turns = turns[2:] if len(turns) > 2 else turns[-1:]
        return system + turns


def printable(text: str) -> str:
    """``text`` without the control characters (escape sequences, carriage returns...) that
    would garble a terminal; newlines and tabs stay. An untrained model writes any byte."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else "\ufffd"
                   for c in text)


@functools.cache
def _streamer() -> type:
    """transformers' ``TextStreamer`` (prints an answer as it comes) through :func:`printable`."""
    from transformers import TextStreamer

    class PrintableStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            super().on_finalized_text(printable(text), stream_end=stream_end)

    return PrintableStreamer


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS of the tokenizer and of the model's generation config, and the end-of-turn token."""
    ids = {tokenizer.eos_token_id} | trained.end_of_turn_ids(tokenizer)
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return {i for i in ids if i is not None}


def load_bot(label: str, where: trained.Trained, device: str, dtype: str) -> Bot:
    """Load ``where`` for chatting (stderr says so); refuse a tokenizer without a template."""
    print(f"alignlab: loading {label} model {where.model_dir} ...", file=sys.stderr, flush=True)
    model, tokenizer = trained.load(where, dtype)
    if not tokenizer.chat_template:
        raise AlignlabError(f"'{where.model_dir}' has no chat template, so it can't be chatted "
                            "with. Use an instruct model, or a run trained with a template.")
    model.to(device)
    return Bot(label, where, model, tokenizer, _stop_ids(model, tokenizer),
               lengths.context_length(model, tokenizer))


def read_prompts(file: str) -> list[Any]:
    """The prompts of ``file`` (``-``: stdin): one a line, or JSONL with a ``prompt`` field."""
    if file == "-":
        text = sys.stdin.read()
    else:
        if not Path(file).is_file():
            raise AlignlabError(f"--file '{file}' does not exist (or is not a file).")
        text = Path(file).read_text(encoding="utf-8")
    return parse_prompts(text, f"--file '{file}'")


def parse_prompts(text: str, name: str) -> list[Any]:
    """Prompts one a line, or JSONL rows with a ``prompt`` (text or a list of messages)."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise AlignlabError(f"{name} holds no prompts.")
    if not lines[0][1].lstrip().startswith("{"):
        return [line.strip() for _, line in lines]
    prompts = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except ValueError as err:
            raise AlignlabError(f"{name}, line {n}: not JSON ({err}).") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not (isinstance(prompt, str) and prompt.strip()) and not _is_messages(prompt):
            raise AlignlabError(f"{name}, line {n}: needs a \"prompt\" field (text, or a list "
                                "of {\"role\", \"content\"} messages).")
        prompts.append(prompt)
    return prompts


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in value)


def conversation_of(prompt: Any, system: str | None) -> Conversation:
    """A prompt (text or messages) as a conversation, after the ``--system`` message."""
    messages = [dict(m) for m in prompt] if isinstance(prompt, list) \
        else [{"role": "user", "content": prompt}]
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def run_script(bots: list[Bot], prompts: list[Any], how: Sampling,
               args: argparse.Namespace) -> int:
    """Answer each prompt on its own (seeded per prompt) and print it; exit code 0."""
    import torch

    transcript = len(prompts) > 1 or len(bots) > 1
    shown = printable if sys.stdout.isatty() else str
    for k, prompt in enumerate(prompts):
        conversation = conversation_of(prompt, args.system)
        answers = []
        for bot in bots:
            torch.manual_seed(args.seed)
            answers.append(bot.answer(conversation, how))
        if args.json:
            row = {"prompt": prompt, "answer": answers[0]}
            if len(bots) > 1:
                row["compare"] = answers[1]
            print(json.dumps(row, ensure_ascii=False), flush=True)
        elif not transcript:
            print(shown(answers[0]), flush=True)
        else:
            asked = prompt if isinstance(prompt, str) else conversation[-1]["content"]
            print(("\n" if k else "") + f"you> {shown(asked)}")
            for bot, text in zip(bots, answers, strict=True):
                print(shown(f"[{bot.label}] {text}" if len(bots) > 1 else text), flush=True)
    return 0


def turn(bots: list[Bot], text: str, how: Sampling) -> None:
    """One interactive turn: each model answers (streamed) and remembers the exchange."""
    if text.startswith("/"):
        if text == "/reset":
            for bot in bots:
                bot.history.clear()
            print("(history cleared)")
        else:
            print(f"(unknown command {text}: /reset clears the history, /exit quits)")
        return
    replies = []
    for bot in bots:
        turns = bot.fit([*bot.history, {"role": "user", "content": text}], how)
        if len(turns) <= len(bot.history):
            print(f"(oldest turns of {bot.label} dropped to fit its context)", file=sys.stderr)
        if len(bots) > 1:
            print(f"[{bot.label}] ", end="", flush=True)
        replies.append((bot, turns, bot.answer(turns, how, stream=True)))
    for bot, turns, reply in replies:  # only now: Ctrl-C leaves every history as it was
        bot.history[:] = [*turns, {"role": "assistant", "content": reply}]


def run_interactive(bots: list[Bot], how: Sampling, args: argparse.Namespace) -> int:
    """The ``you>`` loop; exit code 0 on /exit or Ctrl-D."""
    import torch

    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401
    torch.manual_seed(args.seed)
    system = [{"role": "system", "content": args.system}] if args.system else []
    print("alignlab: /reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops an answer.",
          file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        if text in ("/exit", "/quit"):
            return 0
        for bot in bots:
            bot.history[:] = bot.history or list(system)
        try:
            if text:
                turn(bots, text, how)
        except KeyboardInterrupt:
            print("\n(interrupted)", flush=True)
        except AlignlabError as err:
            print(f"alignlab: error: {err}", file=sys.stderr)


def _compared(args: argparse.Namespace, main: trained.Trained) -> trained.Trained | None:
    """The model named by ``--compare`` (a path, a hub id, or the run's start)."""
    if args.compare is None:
        return None
    if args.compare == _START:
        return trained.start_of(main)
    other = args.compare
    hub_like = other.count("/") == 1 and not other.startswith((".", "/", "~"))
    if hub_like and not Path(other).exists():
        return trained.Trained(Path(other), None)
    return trained.locate(other)


def _device(args: argparse.Namespace) -> tuple[str, str]:
    """(device, dtype): a GPU in bfloat16 when there is one, else the CPU in float32."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    return device, dtype


def _prompts(args: argparse.Namespace) -> list[Any] | None:
    """The scripted prompts, or None for an interactive session."""
    prompts: list[Any] = list(args.prompt)
    if args.file:
        prompts += read_prompts(args.file)
    if not prompts and not sys.stdin.isatty():  # prompts piped in: a script too
        text = sys.stdin.read()
        if not text.strip():
            raise AlignlabError("No prompts: stdin is not a terminal, and empty. Give --prompt "
                                "or --file, pipe prompts in, or run in a terminal to chat.")
        prompts = parse_prompts(text, "stdin")
    if any(isinstance(p, str) and not p.strip() for p in prompts):
        raise AlignlabError("--prompt is empty; give the text to answer.")
    return prompts or None


def chat(argv: Sequence[str]) -> int:
    """Parse, load the model(s), then answer the prompts or talk; raises AlignlabError."""
    args = parser().parse_args(list(argv))
    if args.path is None and args.compare not in (None, _START):
        args.path, args.compare = args.compare, _START  # ``chat --compare RUN``
    if args.path is None:
        raise AlignlabError("Name the run or model to chat with: python -m alignlab chat <run "
                            "dir, model folder or GGUF file>.")
    main_model = trained.locate(args.path)
    how = sampling(args, main_model)
    other = _compared(args, main_model)
    prompts = _prompts(args)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    device, dtype = _device(args)
    bots = [load_bot("trained", main_model, device, dtype)]
    if other is not None:
        bots.append(load_bot("start" if args.compare == _START else "other", other, device,
                             dtype))
    names = " vs ".join(f"{b.label} = {b.where.model_dir}" for b in bots)
    print(f"alignlab: chat with {names}; {how.describe()}, seed {args.seed}, {device}.",
          file=sys.stderr, flush=True)
    if prompts is not None:
        return run_script(bots, prompts, how, args)
    return run_interactive(bots, how, args)


def main(argv: Sequence[str]) -> int:
    """``python -m alignlab chat ARGS``: exit code 0, or 2 with one ``alignlab: error:`` line."""
    try:
        return chat(argv)
    except AlignlabError as err:
        print(f"alignlab: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # while loading, or a scripted answer
        print("alignlab: interrupted", file=sys.stderr)
        return 130
