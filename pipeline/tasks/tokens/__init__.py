"""Named-entity recognition: one IOB2 tag per word, one module per role."""
