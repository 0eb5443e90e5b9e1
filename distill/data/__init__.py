"""Prompt sources: turn a data recipe into Prompt records."""
