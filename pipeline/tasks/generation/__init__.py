"""Decoder language models: label words and free text, one module per role."""
