"""``method.args`` of the stages that are not TRL trainers: dataclasses read by config validation.

Plain annotated fields only: validation reads them with ``ast`` (alignlab.config.check_args)
before anything is imported, and the stages build them from the merged arguments. Importing this
module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Choices are declared here once, as Literal types: config validation reads them from this
# source (alignlab.config.check_rules, with "did you mean"); code gets them with get_args.
Backend = Literal["transformers", "openai", "vllm"]


@dataclass
class BackendArgs:
    """How text is generated; shared by ``method.args`` of the cai and judge stages."""

    backend: Backend = field(default="transformers", metadata={
        "help": "transformers (local model), openai (OpenAI-compatible HTTP server) or vllm."})
    batch_size: int = field(default=32, metadata={"at_least": 1,
        "help": "Prompts per generate() call (transformers/vllm) and rows per durable chunk."})
    temperature: float = field(default=0.7, metadata={"at_least": 0,
        "help": "Sampling temperature; 0 = greedy."})
    max_new_tokens: int = field(default=128, metadata={"at_least": 1,
        "help": "Tokens generated per answer."})
    base_url: str | None = field(default=None, metadata={
        "help": "openai: the server's base URL, e.g. http://127.0.0.1:8000/v1."})
    api_model: str | None = field(default=None, metadata={
        "help": "openai: the served model name (default: model.path)."})
    api: Literal["chat", "completions"] = field(default="chat", metadata={
        "help": "openai: chat (/chat/completions) or completions (/completions, the prompt is "
                "built with the local tokenizer's chat template)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "openai: name of the environment variable holding the API key (may be unset "
                "for local servers). The key itself never goes into a config."})
    concurrency: int = field(default=8, metadata={"at_least": 1,
        "help": "openai: requests in flight at once."})
    max_retries: int = field(default=5, metadata={"at_least": 0,
        "help": "openai: retries of a failed request (5xx, 429, timeouts, dropped connections)."})
    retry_backoff: float = field(default=1.0, metadata={"at_least": 0,
        "help": "openai: first back-off in seconds; doubles on each retry (with jitter)."})
    request_timeout: float = field(default=120.0, metadata={"above": 0,
        "help": "openai: seconds to wait for one response before retrying."})
    top_logprobs: int = field(default=20, metadata={"at_least": 1,
        "help": "openai/vllm: how many next-token log-probs to ask for when judging."})
    prefill: bool = field(default=True, metadata={
        "help": "openai chat: send the judge's answer prefix as a partial assistant turn "
                "(vLLM/SGLang continue_final_message). false: rely on the instruction alone."})


@dataclass
class CAIArgs(BackendArgs):
    """``method.args`` of ``method=cai`` (SL-CAI critique-revision data)."""

    rounds: int = field(default=1, metadata={"at_least": 1,
        "help": "Critique-revision rounds per prompt; each samples a fresh principle."})
    num_few_shot: int | None = field(default=None, metadata={"at_least": 0,
        "help": "How many of the constitution's few-shot chats to prepend (null = all)."})
    categories: list[str] | None = field(
        default_factory=lambda: ["harmful", "borderline"],
        metadata={"help": "Keep prompts of these categories when the data has a 'category' "
                          "column (the toy world's red-team prompts); null keeps all."})
    max_prompts: int | None = field(default=None, metadata={"at_least": 1,
        "help": "Cap on prompts per split (train and test), after a seeded shuffle."})
    helpful_categories: list[str] | None = field(default=None, metadata={
        "help": "Prompts of these categories (toy: [helpful]) are answered without critique and "
                "kept as answered, in *_sft only: Bai et al. add the helpful model's own samples "
                "on helpfulness prompts to SL-CAI's data so the policy stays helpful."})
    max_helpful_prompts: int | None = field(default=None, metadata={"at_least": 1,
        "help": "Cap on those helpfulness prompts per split, after a seeded shuffle."})
    sft_fraction: float = field(default=0.5, metadata={"at_least": 0, "at_most": 1,
        "help": "Share of rows in train_sft/test_sft; the rest go to *_prefs (disjoint, as in "
                "HuggingFaceH4/cai-conversation-harmless)."})


@dataclass
class JudgeArgs(BackendArgs):
    """``method.args`` of ``method=judge`` (RLAIF preference labels)."""

    judge_model: str | None = field(default=None, metadata={
        "help": "The judge: a model folder or hub id (openai: a served name). Default: "
                "model.path."})
    source: Literal["policy", "pairs"] = field(default="policy", metadata={
        "help": "policy: sample candidates from model.path; pairs: relabel the data's "
                "chosen/rejected."})
    num_candidates: int = field(default=2, metadata={"at_least": 2,
        "help": "source=policy: responses sampled per prompt; every distinct pair is judged."})
    swap: bool = field(default=True, metadata={
        "help": "Judge each pair in both orders and average, cancelling position bias."})
    chain_of_thought: bool = field(default=False, metadata={
        "help": "Let the judge reason before answering (then clamp, e.g. clamp=[0.4,0.6])."})
    clamp: list[float] | None = field(default=None, metadata={
        "help": "[low, high] bounds on the soft label, e.g. [0.4, 0.6] with chain_of_thought."})
    min_margin: float = field(default=0.0, metadata={"at_least": 0, "below": 0.5,
        "help": "Drop pairs whose label is within this of 0.5 (ties are always dropped)."})
    max_prompts: int | None = field(default=None, metadata={"at_least": 1,
        "help": "Cap on prompts (or pairs) per split, after a seeded shuffle."})
    categories: list[str] | None = field(default=None, metadata={
        "help": "Keep prompts of these categories when the data has a 'category' column."})
    human_pairs: int = field(default=0, metadata={"at_least": 0,
        "help": "Human-labelled pairs of the data (its chosen/rejected) added to the AI-labelled "
                "ones, per split: Bai et al. mix AI harmlessness labels with human helpfulness "
                "labels into one preference set. 0: AI labels only."})
    human_categories: list[str] | None = field(default=None, metadata={
        "help": "Categories of those human pairs when the data has a 'category' column (toy: "
                "[helpful]); null keeps all."})
    gate: Literal["drop", "warn", "stop", "off"] = field(default="drop", metadata={
        "help": "The judge gate: before its labels are kept, the judge is measured against "
                "labelled pairs, per category; in a category where it is not better than chance "
                "by its 95 % interval: drop (that category's AI labels are left out), warn (kept, "
                "with a warning), stop (the stage stops; its labels stay for resume=true), off."})
    gate_data: str | None = field(default=None, metadata={
        "help": "Labelled pairs (a .json/.jsonl/.parquet file or folder with chosen/rejected "
                "in a TRL format) to gate the judge on, as a whole. Default: the data's rule "
                "where it has one (the toy world's, per category, on the judge's own labels), "
                "else the data's own pairs (per category where the data has categories)."})
    gate_pairs: int = field(default=200, metadata={"at_least": 1,
        "help": "Labelled pairs per split judged for the gate (gate_data or the data's pairs)."})
