"""Evaluation: generation and benchmark scoring."""
