"""Training data: the triplet store, converters from the field's dataset layouts, and splits."""
