"""alignlab's PPO for causal LMs.

``config`` (settings; light, no torch), ``core`` (the math, and the records the trainer's phases
pass on), ``trainer`` (the phases and the loop that calls them).
"""
