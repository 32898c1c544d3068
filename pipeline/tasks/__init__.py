"""The tasks the pipeline can train: the `Task` interface (base.py), one module per family of tasks, and the
registry that finds a task by the name in params.yaml (registry.py). This file imports nothing, so a task
module that imports base.py runs no other task's code."""
