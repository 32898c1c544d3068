"""Checksums of what a registered version carries, recorded at registration and checked wherever the
version is loaded: serving, batch prediction from a `models:/` URI, promotion and rollback.

A registered file that changed afterwards (weights overwritten inside, same size, valid format) would
otherwise serve wrong answers with no error; checkpoints are guarded the same way (pipeline/checkpoints).
The checksums travel as one more artifact of the pyfunc model (CHECKSUMS): a JSON object from
"<artifact key>/<path inside it>" to sha256. Versions registered before it existed carry none and load
unchecked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.data.sources import sha256_of
from pipeline.errors import PipelineError

CHECKSUMS = "checksums"  # the artifact's key
CHECKSUMS_FILE = "artifact_checksums.json"


def write_checksums(artifacts: Mapping[str, Path], path: Path) -> Path:
    """Record the sha256 of every file under each artifact folder in `path`; returns `path`."""
    digests = {
        f"{key}/{file.relative_to(folder).as_posix()}": sha256_of(file)
        for key, folder in sorted(artifacts.items())
        for file in sorted(Path(folder).rglob("*"))
        if file.is_file()
    }
    path.write_text(json.dumps(digests, indent=1, sort_keys=True), encoding="utf-8")
    return path


def verify(artifacts: Mapping[str, str], keys: Iterable[str]) -> None:
    """Stop, naming the file, where a registered file of the artifacts `keys` is missing or changed.
    `artifacts`: the local paths of a loaded version's artifacts (MLflow's context.artifacts)."""
    if CHECKSUMS not in artifacts:
        return  # registered before checksums were recorded
    wanted = set(keys)
    for name, digest in json.loads(Path(artifacts[CHECKSUMS]).read_text(encoding="utf-8")).items():
        key, inside = name.split("/", 1)
        if key not in wanted:
            continue
        file = Path(artifacts[key]) / inside
        if not file.is_file():
            raise PipelineError(f"registered file {name} is missing ({file}); register the model again")
        if sha256_of(file) != digest:
            raise PipelineError(
                f"registered file {name} ({file}) does not match the sha256 recorded when it was registered: "
                "it changed afterwards; register the model again"
            )
