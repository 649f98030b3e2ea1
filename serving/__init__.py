"""Tailor: serving."""
