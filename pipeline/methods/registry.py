"""The registry: every fine-tuning method's code, found by its name (`finetune.method`). A new method is a
spec in specs.py (with METHOD_SPECS' entry), one class on its spec and `Method` (base.py), and one entry in
the list below."""

from __future__ import annotations

from pipeline.methods.adapters import IA3, AdaLora, Dora, Lora, Prefix
from pipeline.methods.base import Method
from pipeline.methods.plain import Freeze, Full

METHODS: dict[str, Method] = {
    method.name: method for method in (Full(), Freeze(), Lora(), Dora(), AdaLora(), Prefix(), IA3())
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (one of {', '.join(METHODS)})") from None
