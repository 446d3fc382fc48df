"""alignlab: align a language model with one Hydra command (SFT, RM, PPO, DPO, KTO, CAI)."""

__version__ = "0.1.0"
