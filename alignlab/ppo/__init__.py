"""alignlab's PPO for causal LMs.

``config`` (settings; light, no torch), ``core`` (the math), ``trainer`` (the loop).
"""
