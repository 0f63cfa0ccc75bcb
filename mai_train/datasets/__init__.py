"""Recipes that build MAI's training and evaluation image sets from pinned public sources (torch-free)."""
