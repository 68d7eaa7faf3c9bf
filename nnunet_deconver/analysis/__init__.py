"""Measurements of networks: parameters, FLOPs, activation memory (later: impulse/frequency responses)."""
