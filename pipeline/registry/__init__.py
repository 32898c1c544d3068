"""The MLflow model registry: what each registered version records, the aliases that name the serving
model (`champion`) and the newest candidate (`challenger`), and the log of promotion decisions.

Decisions are model-version tags `decision.<UTC time>` holding JSON, so the history lives in the registry
itself (whichever tracking store is used) and can be read back with `python -m pipeline.registry.promote --history`.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.data.sources import cache_dir
from pipeline.errors import PipelineError

CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_PREFIX = "decision."
PREVIOUS_CHAMPION_TAG = "previous_champion_version"


def client() -> Any:
    """A client of the tracking store that must already exist: reading the registry never creates one."""
    import mlflow

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise PipelineError(
            f"{uri.removeprefix('sqlite:///')}: no MLflow tracking store (run the pipeline, or set MLFLOW_TRACKING_URI)"
        )
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def version_by_alias(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None when the alias (or the model) does not exist."""
    import mlflow

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def get_version(mlflow_client: Any, name: str, version: str) -> Any:
    import mlflow

    try:
        return mlflow_client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise PipelineError(
            f"registered model '{name}' has no version {version} in {tracking.tracking_uri()}"
        ) from None


def require_loadable(name: str, version: str, purpose: str) -> None:
    """Load the version as serving would (its files checked against the checksums recorded when it was
    registered, pipeline/artifacts): a version that cannot serve never becomes the champion."""
    import mlflow

    try:
        mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except Exception as exc:  # any reason it cannot load is a reason not to serve it
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"v{version} of '{name}' cannot be loaded, so it is not {purpose}: {reason}") from None


def test_metric(version: Any, metric: str) -> float:
    """The test metric evaluate recorded on a version (tag `test_<metric>`)."""
    value = version.tags.get(f"test_{metric}")
    if value is None:
        known = sorted(
            k.removeprefix("test_") for k in version.tags if k.startswith("test_") and k != "test_data_sha256"
        )
        raise PipelineError(
            f"promote.metric: version {version.version} has no test metric '{metric}' (has: {', '.join(known)})"
        )
    return float(value)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_decision(mlflow_client: Any, name: str, versions: list[str], decision: dict[str, Any]) -> None:
    """Write one decision (who, when, what, numbers, why) as a tag on every version it concerns."""
    decision = {"time": now(), "user": getpass.getuser(), "host": socket.gethostname(), **decision}
    key = DECISION_PREFIX + decision["time"].replace(":", "").replace("-", "")
    for version in dict.fromkeys(versions):
        mlflow_client.set_model_version_tag(name, version, key, json.dumps(decision, sort_keys=True))


def decisions(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    """Every recorded decision about the model, oldest first (each once, though tagged on several versions)."""
    found: dict[str, dict[str, Any]] = {}
    for version in mlflow_client.search_model_versions(f"name='{name}'"):
        for key, value in version.tags.items():
            if key.startswith(DECISION_PREFIX):
                found[key] = json.loads(value)
    return [found[key] for key in sorted(found)]


def lock_path(name: str) -> Path:
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + f".{name}.lock")
    return cache_dir() / "locks" / (hashlib.sha256(f"{uri}\0{name}".encode()).hexdigest()[:16] + ".lock")


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """Hold a lock for changing `name`'s aliases, so concurrent promotions (and registrations by evaluate,
    which sets @challenger) run one after the other.

    MLflow has no compare-and-set on aliases: two promotions that both read the old champion would both
    "win" and the last writer would decide. An OS file lock (beside mlflow.db, or in the cache folder for
    a tracking server) serialises promotions started from this machine; a team promotes from one place
    (a CI job) so that holds for them too.
    """
    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
