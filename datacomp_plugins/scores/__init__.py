"""Scores: one module per score, and the registry that names them."""
