"""The one way the pipeline writes a CSV or TSV file (errors, confusion pairs, curves, batch predictions).

pandas quotes a field that holds the separator, a quote or a newline, but not one that holds a bare
carriage return (`\\r`) when lines end in `\\n`: such a text comes back as two rows. Lines end in `\\r\\n`
here, as RFC 4180 says, so both characters count as line breaks and every field holding either is quoted;
any text (newlines, quotes, separators, control characters) reads back unchanged with pandas or the csv
module.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LINE_END = "\r\n"  # RFC 4180; see the module's doc


def write_csv(frame: pd.DataFrame, path: Path, *, sep: str = ",", append: bool = False) -> None:
    """Write `frame` (no index) to `path`; with `append`, add its rows to what is there, without a header
    when the file already has rows."""
    has_rows = append and path.exists() and path.stat().st_size > 0
    frame.to_csv(path, mode="a" if append else "w", header=not has_rows, index=False, sep=sep, lineterminator=LINE_END)
