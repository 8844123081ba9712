"""Benchmark harness: plasma-coord side by side with Arrow Plasma, Ray, vineyard and shared_memory.

Only the standard library (and numpy inside workers) may be imported at package level: the
peer workers import ``bench.peers.*`` from their own virtual environments.
"""
