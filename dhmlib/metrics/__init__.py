"""Metrics in mm: joint, depth, per-vertex and surface errors; mesh metrics."""
