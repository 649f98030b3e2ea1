"""Tailor: training."""
