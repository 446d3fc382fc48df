"""PPOConfig: the settings of alignlab's PPO stage (``method.args`` of ``method=ppo``).

A plain dataclass on purpose: the CLI validates ``method.args`` against these fields by parsing
this file with ``ast``, so it imports nothing heavy. Names follow TRL's old ``PPOConfig`` (TRL
<= 1.12) where a setting existed there, so old configs and habits carry over.

Batch sizes, per process (old TRL's meaning):
    micro batch   = per_device_train_batch_size          (one forward/backward)
    mini batch    = micro batch * gradient_accumulation_steps   (one optimizer step)
    rollout batch = mini batch * num_mini_batches        (prompts sampled per PPO update)
One *step* (``max_steps``, ``save_steps``, ``logging_steps``) is one rollout batch followed by
``num_ppo_epochs`` passes over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

KL_ESTIMATORS = ("k1", "k3")
Critic = Literal["separate", "reward", "shared"]
CRITICS = get_args(Critic)


@dataclass
class PPOConfig:
    """Configuration of alignlab's PPO trainer (actor-critic RLHF for causal LMs)."""

    # --- run -----------------------------------------------------------------------------------
    output_dir: str = field(default="checkpoints", metadata={
        "help": "Where checkpoints go (alignlab sets it to <run dir>/checkpoints)."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling, shuffling and init."})
    max_steps: int = field(default=-1, metadata={
        "help": "Number of PPO updates (rollout batch + PPO epochs). -1: derive it from "
                "total_episodes, else from num_train_epochs over the prompts."})
    total_episodes: int | None = field(default=None, metadata={
        "help": "Number of sampled responses to train on, over all processes (old TRL name)."})
    num_train_epochs: float = field(default=1.0, metadata={
        "help": "Passes over the prompt set when neither max_steps nor total_episodes is set."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N updates."})
    save_strategy: str = field(default="steps", metadata={"help": "steps | no"})
    save_steps: int = field(default=20, metadata={"help": "Checkpoint every N updates."})
    save_total_limit: int | None = field(default=2, metadata={
        "help": "Keep at most this many checkpoints (oldest removed first)."})
    report_to: str = field(default="none", metadata={
        "help": "Logging integration; alignlab PPO logs to metrics.json and the run log."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})

    # --- hardware ------------------------------------------------------------------------------
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even with a GPU."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (autocast)."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass to save memory."})
    reward_model_dtype: str | None = field(default=None, metadata={
        "help": "Evaluate the frozen reward model in this dtype (bfloat16 | float16 | float32); "
                "null: the model's dtype. The RM only runs forward, so a smaller dtype halves "
                "its memory at little cost."})

    # --- optimisation --------------------------------------------------------------------------
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate."})
    lr_scheduler_type: str = field(default="linear", metadata={
        "help": "linear | cosine | constant (each after warmup_steps of linear warm-up)."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up optimizer steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_epsilon: float = field(default=1e-5, metadata={
        "help": "AdamW epsilon; 1e-5 as in OpenAI's lm-human-preferences (Huang et al. 2024)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "Micro batch: sequences per forward/backward on each process."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Micro batches per optimizer step."})
    num_mini_batches: int = field(default=1, metadata={
        "help": "Optimizer steps per PPO epoch (mini batches per rollout batch)."})
    num_ppo_epochs: int = field(default=4, metadata={
        "help": "Passes over each rollout batch (Ouyang et al. 2022 App. C)."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={
        "help": "Sequences per generate / no-grad forward call during rollouts."})

    # --- rollouts ------------------------------------------------------------------------------
    response_length: int = field(default=53, metadata={"help": "Most tokens generated."})
    max_prompt_length: int | None = field(default=512, metadata={
        "help": "Prompts longer than this many tokens keep their last tokens."})
    temperature: float = field(default=0.7, metadata={
        "help": "Sampling temperature; log-probs use the same scaled logits (Huang et al. 2024)."})
    logprobs_from_generate: bool = field(default=True, metadata={
        "help": "Take the rollout log-probs from generate's logits instead of a second policy "
                "forward (faster; keeps batch x response_length x vocab logits, so turn it off "
                "for very large vocabularies on a small GPU). Ignored with bf16: generate's "
                "cached steps round differently from the update's forward there."})
    missing_eos_penalty: float | None = field(default=1.0, metadata={
        "help": "Subtracted from the score of a response that did not end with EOS (EOS trick, "
                "Huang et al. 2024); null: no penalty."})
    eval_samples: int = field(default=3, metadata={
        "help": "Responses sampled per held-out prompt for the before/after evaluation."})
    eval_max_prompts: int | None = field(default=256, metadata={
        "help": "Held-out prompts evaluated before and after training (null: all)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Turn dropout off so log-probs of rollout and update agree."})

    # --- objective -----------------------------------------------------------------------------
    kl_coef: float = field(default=0.05, metadata={
        "help": "beta of the per-token KL penalty beta*KL(pi || pi_ref) (initial value when "
                "adaptive)."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Penalised per-token KL estimator: k1 = log pi - log pi_ref (unbiased, "
                "InstructGPT) or k3 = (r - 1) - log r with r = pi_ref/pi (unbiased, >= 0, lower "
                "variance; Schulman 2020). Both are logged."})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "Adapt kl_coef towards kl_target (Ziegler et al. 2019)."})
    kl_target: float = field(default=6.0, metadata={
        "help": "Target sequence KL (nats) of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={
        "help": "Horizon (episodes) of the adaptive controller."})
    critic: Critic = field(default="separate", metadata={
        "help": "separate: a critic network of its own (full fine-tuning: a copy of the reward "
                "model, trained; LoRA: a second adapter on the frozen base), one more backbone "
                "pass in each forward and backward. reward: the frozen reward model's hidden "
                "states (computed once per rollout) and a trained value head that starts as its "
                "score head; the update runs no critic backbone; needs method.reward_model with "
                "the policy's tokenizer. shared: a value head on the policy's own last hidden "
                "state (old TRL's AutoModelForCausalLMWithValueHead), so the value loss (times "
                "vf_coef) trains the policy's weights too."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO policy ratio clip."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value prediction clip."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    whiten_rewards: bool = field(default=False, metadata={
        "help": "Whiten per-token rewards before GAE (helps with badly scaled RMs)."})

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, "
                             f"not {self.kl_estimator!r}.")
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, not {self.critic!r}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps",
                     "num_mini_batches", "num_ppo_epochs", "local_rollout_forward_batch_size",
                     "response_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.save_strategy not in ("steps", "no"):
            raise ValueError(f"save_strategy must be 'steps' or 'no', not {self.save_strategy!r}.")
        if self.lr_scheduler_type not in ("linear", "cosine", "constant"):
            raise ValueError("lr_scheduler_type must be linear, cosine or constant, not "
                             f"{self.lr_scheduler_type!r}.")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0: PPO needs sampled rollouts.")
        if self.reward_model_dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError("reward_model_dtype must be bfloat16, float16, float32 or null.")

    @property
    def mini_batch_size(self) -> int:
        """Sequences per optimizer step on one process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_batch_size(self) -> int:
        """Prompts sampled per PPO update on one process."""
        return self.mini_batch_size * self.num_mini_batches
