"""Where benchmark figures go: reports/benchmarks/NAME.json, with what ran, where and when, which the
report stage renders. One writer for every benchmark, so each result carries the same provenance."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "reports" / "benchmarks"


def load_average() -> float:
    """The machine's 1-minute load: about the core count means a run had the machine to itself."""
    return round(os.getloadavg()[0], 2)


def write_results(
    name: str, command: str, rows: list[dict[str, Any]], started: float, out: Path = OUT, **extra: Any
) -> Path:
    """Write `rows` (and `extra` fields) to out/NAME.json with the command, machine, core count, date and
    wall time since `started` (a time.perf_counter() value)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - started),
    }
    target = out / f"{name}.json"
    target.write_text(json.dumps({**meta, **extra, "rows": rows}, indent=2) + "\n")
    return target
