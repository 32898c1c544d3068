"""Sequence classification: a label (or a set of labels) per text or text pair, one module per role."""
