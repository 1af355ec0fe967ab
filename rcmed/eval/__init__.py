"""Evaluation: the field's metrics with explicit conventions (empty masks, spacing)."""
