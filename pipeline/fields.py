"""The field types params sections are built from (pipeline/schema.py, and the methods' own sections in
pipeline/methods/specs.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

Fraction = Annotated[float, Field(gt=0, lt=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Whole numbers only: `true` or 2.5 is an error naming the key, not 1 or 2 (pydantic would coerce them).
Int = Annotated[int, Strict()]


class Section(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)
