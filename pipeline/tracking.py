"""MLflow set-up and the provenance every run records: git commit and a hash of the data.

Default tracking is the embedded SQLite store `mlflow.db` at the repository root, with artifacts in
`mlartifacts/` beside it; `MLFLOW_TRACKING_URI` points everything at a tracking server instead. Experiments
that DVC's queue runs in temporary copies of the project log to the project's store too.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

DEFAULT_DB = Path("mlflow.db")
DEFAULT_ARTIFACTS = Path("mlartifacts")
# Where `dvc queue start` runs each queued experiment: a temporary copy of the project inside it.
DVC_QUEUE_WORKSPACES = (".dvc", "tmp", "exps")


def project_root() -> Path:
    """The project whose default store this process uses: the working directory, or the project a queued
    DVC experiment was queued from. DVC tells a queued run nothing about its origin, and its copy is
    deleted afterwards, so a store there would take the experiment's runs and registered versions with it."""
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(DVC_QUEUE_WORKSPACES)):
        if parts[i : i + len(DVC_QUEUE_WORKSPACES)] == DVC_QUEUE_WORKSPACES:
            return Path(*parts[:i])
    return cwd


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_DB}"


def configure(experiment_name: str) -> str:
    """Point MLflow at the tracking store and select (or create) the experiment; returns its id."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    # With the local SQLite store, keep artifacts beside mlflow.db rather than wherever the cwd is.
    sqlite_db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    location = (sqlite_db.resolve().parent / DEFAULT_ARTIFACTS).as_uri() if sqlite_db else None
    if experiment is not None:
        experiment_id = experiment.experiment_id
        # mlflow.db records absolute artifact paths: in a copied or moved project they still name the
        # first folder, whose artifacts its runs would read and overwrite.
        if location is not None and experiment.artifact_location.rstrip("/") != location.rstrip("/"):
            raise PipelineError(
                f"{sqlite_db}: this MLflow store keeps the artifacts of experiment "
                f"'{experiment_name}' in {experiment.artifact_location}, not beside it in "
                f"{DEFAULT_ARTIFACTS}/ (a copied or moved project); to start a store of its own, move "
                f"mlflow.db and {DEFAULT_ARTIFACTS}/ aside, or set MLFLOW_TRACKING_URI to a shared server"
            )
    else:
        try:
            experiment_id = client.create_experiment(experiment_name, artifact_location=location)
        except mlflow.exceptions.MlflowException as error:
            # Another process created it since the lookup (queued experiments starting together): use it.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
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
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def hash_json(value: object) -> str:
    """sha256 of a JSON-serialisable value in canonical form (sorted keys): the identity of a params set."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def dvc_lock_hashes(stage: str, lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """What dvc.lock recorded for `stage`: the md5 of each data dependency and an md5 of its params, as
    tags (`dvc_lock.data.<path>`, `dvc_lock.params_md5`) that tie a registry entry to a commit's dvc.lock.

    Empty when dvc.lock has no entry for the stage or the entry does not describe the files on disk (the
    stage ran outside `dvc repro`): a stale hash would be worse than none.
    """
    import yaml

    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    entry = lock.get("stages", {}).get(stage)
    if not entry:
        return {}
    data_deps = {dep["path"]: dep.get("md5", "") for dep in entry.get("deps", []) if dep["path"].startswith("data/")}
    for path, md5 in data_deps.items():
        # DVC 3 hashes a file as the plain md5 of its bytes; folders (".dir") are not re-checked here.
        if not md5.endswith(".dir") and (not Path(path).is_file() or _md5(Path(path)) != md5):
            return {}
    tags = {f"dvc_lock.data.{path}": md5 for path, md5 in data_deps.items()}
    params = entry.get("params", {})
    tags["dvc_lock.params_md5"] = hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return tags


def _md5(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def start_or_resume_run(run_id: str | None) -> Any:
    """mlflow.start_run, continuing `run_id` when resuming (a new run if the store no longer has it)."""
    import mlflow

    if run_id:
        try:
            return mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException:
            print(f"finetune: MLflow run {run_id} is gone; logging to a new run", file=sys.stderr)
    return mlflow.start_run()
