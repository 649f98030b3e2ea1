"""Tailor: models."""
