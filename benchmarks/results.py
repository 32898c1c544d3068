"""Where benchmark figures go: reports/benchmarks/NAME.json, with what ran, where and when, which the
report stage renders. One writer for every benchmark, so each result carries the same provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "reports" / "benchmarks"


def load_average() -> float:
    """The machine's 1-minute load: about the core count means a run had the machine to itself."""
    return round(os.getloadavg()[0], 2)


def child_result(command: list[str], what: str) -> dict[str, Any]:
    """Run one contender in a process of its own (so its peak RSS is its own) and return the JSON it
    printed on its `RESULT ` line; stop with the tail of its stderr when it printed none."""
    # From the repository root, where `python -m benchmarks.NAME` finds the package.
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=OUT.parents[1])
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def write_results(
    name: str,
    command: str,
    rows: list[dict[str, Any]],
    started: float,
    out: Path = OUT,
    load_before: float | None = None,
    **extra: Any,
) -> Path:
    """Write `rows` (and `extra` fields) to out/NAME.json with the command, machine, core count, date and
    wall time since `started` (a time.perf_counter() value). With `load_before` (load_average() when the
    run started): the CPU model and ISA too, and the load before and after."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - started),
    }
    if load_before is not None:
        from pipeline.prediction.runtimes import machine

        meta |= {"machine": machine(), "load_average_before": load_before, "load_average_after": load_average()}
    target = out / f"{name}.json"
    target.write_text(json.dumps({**meta, **extra, "rows": rows}, indent=2) + "\n")
    if out == OUT:  # the committed results: the generated page follows them
        from benchmarks import docs_page

        docs_page.main([])
    return target
