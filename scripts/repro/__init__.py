"""Reproduction grids of the five methods, run by `scripts/reproduce.py` (never imported)."""
