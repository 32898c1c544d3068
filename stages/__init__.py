"""Reproducible fine-tuning pipeline: one module per DVC stage plus shared helpers."""
