"""MLflow set-up and the provenance every run records: git commit and a hash of the data.

Default tracking is the embedded SQLite store `mlflow.db` at the repository root, with artifacts in
`mlartifacts/` beside it; `MLFLOW_TRACKING_URI` points everything at a tracking server instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

DEFAULT_DB = Path("mlflow.db")
DEFAULT_ARTIFACTS = Path("mlartifacts")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB.resolve()}"


def configure(experiment_name: str) -> str:
    """Point MLflow at the tracking store and select (or create) the experiment; returns its id."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # With the local SQLite store, keep artifacts beside mlflow.db rather than wherever the cwd is.
        location = DEFAULT_ARTIFACTS.resolve().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment_name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_state() -> dict[str, str]:
    """The commit the code came from and whether the work tree had uncommitted changes."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def hash_files(files: list[Path]) -> str:
    """sha256 over the names and contents of `files`, in order: the identity of a dataset."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
