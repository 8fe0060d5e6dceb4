"""Experiments over training runs: notebook 02's recipe, the ablation variants, the ablation and its diagnostics."""
