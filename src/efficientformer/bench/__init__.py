"""Profiling (parameters, MACs) and latency benchmarks."""

from .profile import PUBLISHED, ProfileResult, format_profile, paper_param_count, profile_model

__all__ = ["PUBLISHED", "ProfileResult", "format_profile", "paper_param_count", "profile_model"]
