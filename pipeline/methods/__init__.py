"""Fine-tuning methods (`finetune.method`): the `Method` interface and what every method shares (base.py),
the methods (plain.py, adapters.py) and the registry that finds one by its name (registry.py). This file
imports nothing, so a method module that imports base.py runs no other method's code."""
