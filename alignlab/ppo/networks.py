"""PPO's models: the policy and its critic behind one module (:class:`PolicyAndValue`), LoRA
adapter switching, and :class:`PPOModels`, the models a PPO run holds (policy with critic,
reference, reward model, tokenizers, reward functions), built from the config by
:func:`build_models`.

Full fine-tuning: policy, frozen reference, critic (initialised from the reward model: its
backbone plus its score head applied to every token) and the frozen reward model. With LoRA:
one frozen base carries two adapters, ``default`` (policy) and ``critic`` (+ a value head); the
reference is the base with adapters disabled (:class:`AdaptersOff`, as a model to call).
That is ``method.args.critic=separate``; ``reward`` reads the values off the frozen reward
model's hidden states with a trained copy of its score head, ``shared`` off the policy's own
pass (:class:`PolicyAndValue`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab import models, rewards
from alignlab.errors import AlignlabError

POLICY, CRITIC = "default", "critic"  # LoRA adapter names




@contextlib.contextmanager
def lora_adapter(model: nn.Module, name: str | None) -> Iterator[None]:
    """Run ``model`` with LoRA adapter ``name`` active (None: adapters off = the reference).

    Switches the tuner layers directly: peft's ``set_adapter``/``disable_adapter`` also flip
    ``requires_grad``, which would freeze the other adapter halfway through a training step.
    """
    layers = tuner_layers(model)
    state = [(name if name is not None else m._active_adapter, name is None) for m in layers]
    with adapter_state(layers, state):
        yield


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """The LoRA (peft tuner) layers of ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapter_state(layers: list[nn.Module], state: list[tuple[Any, bool]]) -> Iterator[None]:
    """Set each tuner layer's (active adapter, adapters disabled), restore them on exit."""
    saved = [(m._active_adapter, m._disable_adapters) for m in layers]
    for m, (active, disabled) in zip(layers, state, strict=True):
        m._active_adapter, m._disable_adapters = active, disabled
    try:
        yield
    finally:
        for m, (active, disabled) in zip(layers, saved, strict=True):
            m._active_adapter, m._disable_adapters = active, disabled


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant gradient checkpointing whose recomputation sees the adapters of its forward.

    The backward pass recomputes each checkpointed layer after :func:`lora_adapter` has been
    left: without help, the critic's layers (``critic`` adapter) would be recomputed with
    whatever adapter is set then (the policy's) and the critic would get the policy's
    gradients. ``context_fn`` runs at each checkpointed forward: it records the tuner layers'
    state then and sets it again around that layer's recomputation.
    """
    layers = tuner_layers(model)

    def context_fn() -> tuple[Any, Any]:
        state = [(m._active_adapter, m._disable_adapters) for m in layers]
        return contextlib.nullcontext(), adapter_state(layers, state)

    kwargs: dict[str, Any] = {"use_reentrant": False}
    if layers:
        kwargs["context_fn"] = context_fn
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as ``generate`` does for left
    padding; a plain forward would count the padding and shift every position."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class PolicyAndValue(nn.Module):
    """The trainable part: the policy and the critic, in one module so DDP sees one forward.

    ``mode`` (``method.args.critic``) says where the values come from: ``separate``, a critic
    network (``critic``; None with LoRA, where it is the policy's base run with the ``critic``
    adapter); ``reward``, the frozen reward model's hidden states (``features``, computed in the
    rollout and reused by the update); ``shared``, the policy's own pass (the hidden states its
    output layer reads). ``value_head`` maps those hidden states to a scalar per token.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None, value_head: nn.Module,
                 lora: bool, mode: str = "separate", reward_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy, self.critic, self.value_head, self.lora = policy, critic, value_head, lora
        self.mode = mode
        # Frozen and not a submodule: not trained, saved or wrapped by DDP with the rest.
        self.__dict__["reward_model"] = reward_model

    def policy_logits(self, ids: torch.Tensor, mask: torch.Tensor, context: int,
                      adapter: str | None = POLICY) -> torch.Tensor:
        """Logits predicting the response tokens ``ids[:, context:]`` (with LoRA,
        ``adapter=None`` gives the reference: the base with adapters off)."""
        width = ids.shape[1] - context
        ctx = lora_adapter(self.policy, adapter) if self.lora else contextlib.nullcontext()
        with ctx:
            # logits_to_keep: only the positions that predict response tokens (large vocabs)
            out = self.policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                              use_cache=False, logits_to_keep=width + 1)
        return out.logits[:, :-1]

    @torch.no_grad()
    def features(self, ids: torch.Tensor, mask: torch.Tensor, context: int) -> torch.Tensor:
        """critic=reward: the frozen reward model's last hidden states [B, R, H] at the states
        before each response token (the values' inputs)."""
        rm = self.__dict__["reward_model"]
        hidden = getattr(rm, rm.base_model_prefix)(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
            use_cache=False)[0]
        return hidden[:, context - 1:-1]

    def values(self, ids: torch.Tensor, mask: torch.Tensor, context: int,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """V(s_t) for every response position t (the state before response token t);
        ``features``: the rollout's :meth:`features` of these rows, when critic=reward."""
        if self.mode == "shared":
            return self(ids, mask, context)[1]
        if self.mode == "reward":
            return self.value(self.features(ids, mask, context) if features is None else features)
        if self.lora:
            base = self.policy.get_base_model()
            backbone = getattr(base, base.base_model_prefix)
            with lora_adapter(self.policy, CRITIC):
                hidden = backbone(input_ids=ids, attention_mask=mask,
                                  position_ids=position_ids(mask), use_cache=False)[0]
        else:
            backbone = getattr(self.critic, self.critic.base_model_prefix)
            hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                              use_cache=False)[0]
        return self.value(hidden[:, context - 1:-1])

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head on hidden states [B, T, H]: values [B, T] in float32."""
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: int,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode != "shared":
            return (self.policy_logits(ids, mask, context),
                    self.values(ids, mask, context, features))
        # One pass: the values read what the output layer reads (its input, the final hidden
        # states at the kept positions), whatever the model does after it (soft-capping, ...).
        seen: list[torch.Tensor] = []
        head = self.policy.get_output_embeddings()
        hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
        try:
            logits = self.policy_logits(ids, mask, context)
        finally:
            hook.remove()
        return logits, self.value(seen[-1][:, :-1])


def value_head_of(model: nn.Module) -> nn.Module:
    """The one-logit head of a sequence-classification model (``score`` for most LMs)."""
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
    raise AlignlabError(f"Cannot find the score head of {type(model).__name__} to initialise the "
                        "critic. Use a Llama/Qwen/Mistral-style reward model, or model.lora=true.")


@dataclass
class PPOModels:
    """The models of a PPO run (see :func:`build_models`) and how responses end."""

    model: PolicyAndValue  # the trainable policy + critic
    reference: nn.Module | None  # frozen; None with LoRA: the base with adapters off
    tokenizer: Any
    reward_model: nn.Module | None = None  # frozen sequence classifier, or None
    reward_tokenizer: Any = None
    reward_funcs: list[Callable[..., list[float | None]]] = field(default_factory=list)
    eos_ids: list[int] = field(default_factory=list)  # every id that ends a response


def build_models(cfg: Any, args: Any) -> PPOModels:
    """Policy+critic (trainable), reference, reward models/functions and the tokenizer."""
    lora_cfg = models.lora_config(cfg.model)
    path = models.resolve_path(cfg.model, cfg.seed)
    if lora_cfg is not None and cfg.method.reference \
            and Path(cfg.method.reference).expanduser().resolve() != Path(path).resolve():
        raise AlignlabError("With model.lora=true the PPO reference is the base model with the "
                            "adapters off, so method.reference cannot be used. Remove "
                            "method.reference, or train without LoRA.")
    if lora_cfg is None:
        policy, tokenizer, reference = models.load_policy(cfg)
    else:  # the reference is the base with adapters off: no second copy
        tokenizer = models.load_tokenizer(cfg.model, path)
        policy, reference = models.load_model(cfg.model, path, cfg.hardware), None
    reward_model = reward_tok = None
    if cfg.method.reward_model:
        reward_model, reward_tok = rewards.load_reward_model(
            cfg, str(cfg.method.reward_model), args.reward_model_dtype)
    mode, critic = args.critic, None
    if mode == "reward":
        check_reward_critic(reward_model, reward_tok, tokenizer)
    if lora_cfg is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, lora_cfg, adapter_name=POLICY)
        adapters = (POLICY, CRITIC) if mode == "separate" else (POLICY,)
        if mode == "separate":
            policy.add_adapter(CRITIC, lora_cfg)
        for name, p in policy.named_parameters():  # the adapters train; the base stays frozen
            p.requires_grad_(any(f".{a}." in name for a in adapters) and "lora_" in name)
    if mode == "reward":  # the critic starts as the reward model (Ouyang et al. 2022 App. C)
        value_head = copy.deepcopy(value_head_of(reward_model)).float().requires_grad_(True)
    elif lora_cfg is not None or mode == "shared":
        hidden = policy.get_base_model() if lora_cfg is not None else policy
        value_head = nn.Linear(hidden.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(value_head.weight)  # V = 0 at first: the base's features mean nothing yet
        nn.init.zeros_(value_head.bias)
    else:
        # The critic starts as the reward model (Ouyang et al. 2022 App. C): it already reads
        # responses for quality, so its values are informative from the first update.
        critic_path = str(cfg.method.reward_model) if cfg.method.reward_model else path
        critic = models.load_model(cfg.model, critic_path, cfg.hardware, kind="reward")
        value_head = value_head_of(critic)
        critic.requires_grad_(True)
    if args.disable_dropout:  # rollout and update log-probs must come from the same function
        for m in (policy, critic, reference):
            for module in m.modules() if m is not None else ():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
    if args.gradient_checkpointing:
        for m in (policy, critic):
            if m is not None:
                enable_gradient_checkpointing(m)
    return PPOModels(model=PolicyAndValue(policy, critic, value_head, lora_cfg is not None,
                                          mode=mode, reward_model=reward_model),
                     reference=reference, tokenizer=tokenizer, reward_model=reward_model,
                     reward_tokenizer=reward_tok,
                     reward_funcs=rewards.functions(list(cfg.method.reward_funcs or [])),
                     eos_ids=eos_token_ids(tokenizer, policy))


def check_reward_critic(reward_model: nn.Module | None, reward_tok: Any, tokenizer: Any) -> None:
    """critic=reward reads the reward model on the policy's token ids: it needs one, with the
    same vocabulary."""
    if reward_model is None:
        raise AlignlabError("method.args.critic=reward starts the critic from the reward model, "
                            "and there is none: set method.reward_model=<reward run>/model, or "
                            "use method.args.critic=separate.")
    if reward_tok.get_vocab() != tokenizer.get_vocab():
        raise AlignlabError("method.args.critic=reward reads the reward model on the policy's "
                            "tokens, but their tokenizers differ. Train the reward model from "
                            "the policy's model, or use method.args.critic=separate.")


def eos_token_ids(tokenizer: Any, model: nn.Module) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's declared EOS ids."""
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [declared] if isinstance(declared, int) else list(declared or [])
    return sorted({tokenizer.eos_token_id, *ids} - {None})


class AdaptersOff(nn.Module):
    """The LoRA policy with its adapters off, i.e. the reference, as a model to call."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, **kwargs: Any) -> Any:
        with lora_adapter(self.policy, None):
            return self.policy(**kwargs)


def save_policy(model: PolicyAndValue, tokenizer: Any, out: Path) -> None:
    """The trained policy as a normal HF folder (only the policy adapter when LoRA)."""
    if model.lora:
        model.policy.save_pretrained(str(out), selected_adapters=[POLICY])
    else:
        model.policy.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
