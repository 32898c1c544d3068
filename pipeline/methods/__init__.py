"""Fine-tuning methods (`finetune.method`): each method's spec, with its params section (specs.py, what
params validation reads), the `Method` interface and what every method shares (base.py), the methods' code
(plain.py, adapters.py) and the registry that finds one by its name (registry.py). This file imports
nothing, so a module that imports specs.py runs no method's code."""
