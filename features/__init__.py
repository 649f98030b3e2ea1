"""Tailor: features."""
