"""Evaluating a snapshot on held-out frames (``dhm test``) and the evaluation result."""
