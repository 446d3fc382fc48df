"""The method registry: every stage alignlab runs, one typed row each, in :data:`REGISTRY`.

A row is a :class:`alignlab.methods.spec.Method`: the dataclass that ``method.args`` fill, the
data it reads, what it needs (a reward, a constitution, an SFT'd start), its console and curve
keys, its report headline, and ``run(cfg, run_dir) -> metrics``. The TRL-backed stages (sft,
reward, dpo, kto, orpo, grpo, rloo) are rows of one table in :mod:`alignlab.methods.trainers`,
built by one builder; the others (ppo, cai, judge, eval, export) are modules here, each ending
with its ``SPEC`` row. Validation, the console and the report ask the row, never the name.
Adding a TRL-backed method is a row in that table and one YAML in conf/method/.
"""

from __future__ import annotations

from alignlab.errors import AlignlabError, did_you_mean
from alignlab.methods import cai, judge, ppo, trainers
from alignlab.methods import eval as evaluate
from alignlab.methods import export as export_stage
from alignlab.methods.spec import Method

REGISTRY: dict[str, Method] = {
    **trainers.TABLE,
    **{m.name: m for m in (ppo.SPEC, cai.SPEC, judge.SPEC, evaluate.SPEC, export_stage.SPEC)},
}


def names() -> list[str]:
    """All registered method names."""
    return sorted(REGISTRY)


def load(name: str) -> Method:
    """The row of a method name (unknown: one line with the closest names)."""
    if name not in REGISTRY:
        raise AlignlabError(f"Unknown method '{name}'.{did_you_mean(name, names())}")
    return REGISTRY[name]


def find(name: object) -> Method | None:
    """The row of a method name, None for a name no row has (e.g. an old run's)."""
    return REGISTRY.get(name) if isinstance(name, str) else None


def curve_keys() -> tuple[str, ...]:
    """Every method's curve keys, in first-seen order: for a run whose method is unknown."""
    return tuple(dict.fromkeys(k for m in REGISTRY.values() for k in m.curve_keys))
