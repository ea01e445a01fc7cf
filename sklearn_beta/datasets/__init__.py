"""Traces with known betas: a step-level engine simulator and a shipped sample."""

from ._base import load_sample_trace
from ._simulate import simulate_trace
from ._window import cut_window

__all__ = ["cut_window", "load_sample_trace", "simulate_trace"]
