"""Where each ``data.format``'s rows come from, and what else that data offers.

A :class:`Source` loads rows for a kind and split and says which optional capabilities its data
has: a rule that scores responses (so evaluation needs no reward model), a config check, and
whether the built-in model's SFT on it is a sensible start for later stages. The toy world
registers itself (:mod:`alignlab.data.toy`); every other format is a preset over hub datasets
and local files (:mod:`alignlab.data.presets`), the default source.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.data import presets


@dataclass(frozen=True)
class RuleScores:
    """A rule's scores of responses to prompts: one per response, and summaries."""

    items: list[float]  # one score per response, 0..1
    categories: list[str | None]  # each prompt's category (None: the data has none)
    per_category: dict[str, float] = field(default_factory=dict)  # mean score per category
    refusals: dict[str, float] = field(default_factory=dict)  # share refused, per category
    # The share of borderline (harmless but dangerous-sounding) prompts refused: Bai et al.'s
    # measure of an evasive assistant; None without such prompts.
    evasiveness: float | None = None
    refused: list[bool] = field(default_factory=list)  # per response: whether it declines

    @property
    def score(self) -> float:
        """The mean score (0 for no responses)."""
        return sum(self.items) / max(1, len(self.items))

    @property
    def n(self) -> int:
        """How many responses were scored."""
        return len(self.items)

    def per_category_n(self) -> dict[str, int]:
        """How many responses each category's mean is over."""
        return {c: self.categories.count(c) for c in self.per_category}


# ``f(prompts, responses) -> RuleScores``; prompts and responses are strings or conversations.
RuleScorer = Callable[[Sequence[Any], Sequence[Any]], RuleScores]


@dataclass(frozen=True)
class Source:
    """How rows of one ``data.format`` are loaded, and which optional capabilities they have."""

    # ``rows(data, kind, split)``: the ``datasets.Dataset`` of ``split`` ("train"/"test") as
    # ``kind`` rows; ``data`` is the ``data`` config group as a plain mapping.
    rows: Callable[[Mapping[str, Any], str, str], Any]
    # Whether ``data.path`` must be set (generated data needs none).
    needs_path: bool = True
    # ``check(data, pending)``: cheap checks of the config before any run starts (raises
    # AlignlabError); ``pending``: paths earlier stages of a recipe will write.
    check: Callable[[Mapping[str, Any], Collection[str]], None] | None = None
    # A rule that scores responses to this data's prompts, when it has one (evaluation then
    # needs no reward model).
    rule: RuleScorer | None = None
    # Whether the built-in model's SFT on this data is the start of the stages that refine a
    # policy (``alignlab.toy_start``).
    sft_start: bool = False
    # Each category's safety mark, "safe" or "unsafe" (a prompt the assistant should decline),
    # when the data's categories say it; evaluation then measures over-refusal (refused safe
    # prompts) and compliance with unsafe ones. Other data marks prompts in a 'safety' column.
    safety: Mapping[str, str] = field(default_factory=dict)


_SOURCES: dict[str, Source] = {}


def register_source(fmt: str, source: Source) -> None:
    """Make ``source`` the one that ``data.format=<fmt>`` uses."""
    _SOURCES[fmt] = source


PRESETS = Source(rows=presets.load_preset, check=presets.check_config)


def source(data: Mapping[str, Any]) -> Source:
    """The source of the ``data`` config group (a mapping or an OmegaConf node): the one
    registered for its ``format``, else the presets (which reject an unknown format)."""
    return _SOURCES.get(str(data.get("format") or "trl"), PRESETS)


def formats() -> tuple[str, ...]:
    """Every ``data.format`` there is: the registered sources', then the presets'."""
    return (*_SOURCES, *(f for f in presets.FORMATS if f not in _SOURCES))
