"""Held-out evaluation during RL, and an alarm for reward over-optimisation.

PPO, GRPO and RLOO climb a proxy: a reward model or reward functions. Pushed far enough, the
policy finds what the proxy over-rates, and the proxy keeps rising while the true quality falls
(Gao et al. 2022, "Scaling laws for reward model overoptimization"). Every ``watch.every``
updates the policy is sampled on the same held-out prompts and scored by a judge *other than
the training reward*: the data's rule (the toy world's) or a second reward model
(``watch.reward_model``). Its score, with a 95 % interval clustered by prompt, is logged beside
the proxy (the training reward) and the KL. When the proxy has risen since the held-out judge's
best point while the judge fell below it by more than its interval (the best score lies above
the current interval), one warning line says so; with ``watch.on_alarm=stop`` the stage stops
there and keeps the policy of that best point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from alignlab import data, evaluation, rewards
from alignlab.errors import AlignlabError
from alignlab.results import Interval

log = logging.getLogger("alignlab")

ACTIONS = ("warn", "stop")
JUDGES = ("auto", "toy", "reward")


@dataclass
class Point:
    """One held-out evaluation: after ``step`` updates."""

    step: int
    judge: float
    ci_low: float
    ci_high: float
    n: int
    proxy: float | None  # the training reward logged at that update
    kl: float | None



@dataclass
class Watch:
    """The held-out judge of one RL stage; :func:`create` builds it (None when it is off)."""

    cfg: Any
    every: int
    args: evaluation.EvalArgs
    judge: str  # "toy" (the data's rule) or "reward" (a second reward model)
    on_alarm: str
    reward_model: Any = None
    reward_tokenizer: Any = None
    inputs: Any = None  # evaluation.EvalInputs: the held-out prompts, loaded once
    points: list[Point] = field(default_factory=list)
    best: Point | None = None
    best_state: dict[str, Any] | None = None  # the trainable weights at the best point
    alarm: Point | None = None
    stopped: bool = False

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def check(self, step: int, model: Any, tokenizer: Any, *, proxy: float | None,
              kl: float | None, main: bool = True) -> bool:
        """Evaluate the policy after ``step`` updates; True when the stage should stop (the
        alarm fired with ``on_alarm=stop``: the best point's weights are back in ``model``)."""
        was_training = model.training
        with _own_random_state():  # the training's random stream goes on as without the watch
            result, _ = evaluation.evaluate(self.cfg, model, tokenizer, self.args,
                                            reward_model=self.reward_model,
                                            reward_tokenizer=self.reward_tokenizer,
                                            inputs=self.inputs, progress=False)
        model.train(was_training)
        figure = result.rule if self.judge == "toy" else result.reward
        assert figure is not None
        ci = Interval.read(figure)
        assert ci is not None and ci.low is not None and ci.high is not None
        point = Point(step=step, judge=ci.mean, ci_low=ci.low, ci_high=ci.high, n=ci.n or 0,
                      proxy=proxy, kl=kl)
        self.points.append(point)
        if main:
            log.info("watch: step %d: held-out %s %.3f [%.3f, %.3f] (n %d), training reward %s, "
                     "KL %s", step, self.judge, point.judge, point.ci_low, point.ci_high,
                     point.n, _fmt(proxy), _fmt(kl))
        if self.best is None or point.judge > self.best.judge:
            self.best = point
            self.best_state = _trainable_state(model)
            return False
        if self.alarm is None and _over_optimised(self.best, point):
            self.alarm = point
            then = ("stopping, and keeping the policy of step "
                    f"{self.best.step} (watch.on_alarm=stop)" if self.on_alarm == "stop" else
                    "training goes on (watch.on_alarm=stop stops here and keeps the best "
                    "policy)")
            if main:
                log.warning(
                    "reward over-optimisation: the training reward rose from %s (step %d) to "
                    "%s while the held-out %s fell from %.3f to %.3f [%.3f, %.3f] (step %d); "
                    "%s. Raise the KL coefficient or lower the learning rate.",
                    _fmt(self.best.proxy), self.best.step, _fmt(proxy), self.judge,
                    self.best.judge, point.judge, point.ci_low, point.ci_high, step, then)
            if self.on_alarm == "stop":
                restore(model, self.best_state)
                self.stopped = True
                return True
        return False

    def summary(self) -> dict[str, Any]:
        """metrics.json's ``watch``: every point, the best, the alarm (or None)."""
        return {"judge": self.judge, "every": self.every, "on_alarm": self.on_alarm,
                "points": [dataclasses.asdict(p) for p in self.points],
                "best": dataclasses.asdict(self.best) if self.best else None,
                "alarm": dataclasses.asdict(self.alarm) if self.alarm else None,
                "stopped": self.stopped}


def _over_optimised(best: Point, now: Point) -> bool:
    """The judge fell by more than its interval (its best lies above the current interval)
    while the training reward rose since that best point."""
    rose = best.proxy is not None and now.proxy is not None and now.proxy > best.proxy
    return rose and now.ci_high < best.judge


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@contextlib.contextmanager
def _own_random_state() -> Any:
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


def _trainable_state(model: Any) -> dict[str, Any]:
    """A CPU copy of the weights that train (LoRA: the adapters only)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
            if p.requires_grad}


def restore(model: Any, state: dict[str, Any] | None) -> None:
    """Put the weights of :func:`_trainable_state` back."""
    if not state:
        return
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def check(cfg: Any) -> None:
    """``watch`` settings that cannot work, before any model loads (config validation)."""
    w = cfg["watch"] if isinstance(cfg, dict) else cfg.watch
    if w["on_alarm"] not in ACTIONS:
        raise AlignlabError(f"watch.on_alarm='{w['on_alarm']}' is unknown. Use warn or stop.")
    if w["judge"] not in JUDGES:
        raise AlignlabError(f"watch.judge='{w['judge']}' is unknown. Use auto, toy or reward.")
    for key in ("every", "prompts", "samples"):
        if isinstance(w[key], bool) or not isinstance(w[key], int) or w[key] < 0 \
                or (key != "every" and w[key] < 1):
            raise AlignlabError(f"watch.{key}={w[key]!r} must be a positive whole number"
                                f"{' (0: off)' if key == 'every' else ''}.")
    if w["judge"] == "reward" and not w.get("reward_model"):
        raise AlignlabError("watch.judge=reward needs watch.reward_model=<a second reward "
                            "model>, not the one the stage trains against.")


def create(cfg: Any, *, max_new_tokens: int, temperature: float = 0.7) -> Watch | None:
    """The stage's watch, or None when ``watch.every`` is 0 or no judge other than the
    training reward exists (said in one line)."""
    w = cfg.watch
    if not w.every:
        return None
    rule = data.source(cfg.data).rule
    trained_on = [str(f) for f in (cfg.method.get("reward_funcs") or [])]
    judge = w.judge
    if judge == "auto":
        judge = "reward" if w.reward_model else "toy" if rule is not None else None
    if judge == "toy" and (rule is None or _rule_is_trained_on(trained_on)):
        why = "the data has no rule" if rule is None else "the stage trains on the rule itself"
        if w.judge == "toy":
            raise AlignlabError(f"watch.judge=toy cannot watch this stage: {why}. Set "
                                "watch.judge=reward with watch.reward_model=<a second reward "
                                "model>, or watch.every=0.")
        judge = None
    if judge is None:
        log.info("watch: off (no held-out judge other than the training reward; set "
                 "watch.reward_model=<a second reward model> to watch for over-optimisation)")
        return None
    rm = rm_tok = None
    if judge == "reward":
        if str(w.reward_model) == str(cfg.method.get("reward_model")):
            raise AlignlabError("watch.reward_model is the reward model the stage trains "
                                "against; over-optimisation shows only on another judge.")
        rm, rm_tok = rewards.load_reward_model(cfg, str(w.reward_model))
    args = evaluation.EvalArgs(num_samples=int(w.samples), max_prompts=int(w.prompts),
                               max_new_tokens=int(w.max_new_tokens or max_new_tokens),
                               temperature=temperature)
    inputs = evaluation.prepare(cfg, args, reward_model=rm is not None, pair_accuracy=False)
    return Watch(cfg=cfg, every=int(w.every), args=args, judge=judge,
                 on_alarm=str(w.on_alarm), reward_model=rm, reward_tokenizer=rm_tok,
                 inputs=inputs)


def _rule_is_trained_on(funcs: list[str]) -> bool:
    """Whether the stage's reward functions include the data's rule (``toy_judge``)."""
    return any(rewards.FUNCTIONS.get(f, f) == rewards.FUNCTIONS["toy_judge"] for f in funcs)
