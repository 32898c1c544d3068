"""Checkpoints of an interrupted finetune: which one to resume from, and whether it may be resumed.

Checkpoints live in `checkpoints/`, outside the stage's outputs, with `run.json` naming the params/data/model
fingerprint and the MLflow run. A finetune killed at any moment continues from its newest complete
checkpoint in the same MLflow run; checkpoints of other params, data or model, or unreadable ones, are
refused (or discarded with `finetune.on_bad_checkpoint: restart`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline.data.sources import sha256_of
from pipeline.errors import PipelineError, atomic_file
from pipeline.methods.registry import get_method
from pipeline.schema import FinetuneParams
from pipeline.training import distributed

RUN_FILE = "run.json"
CHECKSUMS_FILE = "checksums.json"  # in each checkpoint, written last


def step_of(checkpoint: str | None) -> int | None:
    """The optimizer step of a `checkpoint-N` folder."""
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def checkpoint_to_resume(folder: Path, fingerprint: str, params: FinetuneParams) -> tuple[str | None, str | None]:
    """(newest complete checkpoint, MLflow run id) of an interrupted run of the same params, data and
    model; (None, None) to train from the start. A folder from another run, or a checkpoint whose files
    do not read, stops the stage unless `finetune.on_bad_checkpoint: restart`."""
    if not folder.exists():
        return None, None
    if not params.resume:
        shutil.rmtree(folder)
        return None, None
    method = get_method(params.method)
    if method.not_resumable:  # no checkpoint can continue the same run: start over, and say so
        print(
            f"finetune: {folder} holds an interrupted {method.name} run, which cannot be resumed "
            f"({method.not_resumable}); training from the start",
            file=sys.stderr,
        )
        shutil.rmtree(folder)
        return None, None
    try:
        run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        problem = None if run["fingerprint"] == fingerprint else "comes from other params, data or model"
    except (OSError, ValueError, KeyError, TypeError):
        run, problem = {}, f"has no readable {RUN_FILE}"
    checkpoint = None
    if problem is None:
        checkpoint, problem = newest_complete_checkpoint(folder)
    if problem is None and checkpoint is None:
        # Killed before its first complete checkpoint: nothing to continue; a new MLflow run, not the old one.
        print(f"finetune: {folder} holds no complete checkpoint; training from the start", file=sys.stderr)
        shutil.rmtree(folder)
        return None, None
    if problem is not None:
        if params.on_bad_checkpoint == "error":
            raise PipelineError(f"{folder}: {problem}; delete it, or set finetune.on_bad_checkpoint: restart")
        print(
            f"finetune: {folder} {problem}; training from the start (finetune.on_bad_checkpoint: restart)",
            file=sys.stderr,
        )
        shutil.rmtree(folder)
        return None, None
    return checkpoint, run["mlflow_run_id"]


def newest_complete_checkpoint(folder: Path) -> tuple[str | None, str | None]:
    """(checkpoint, problem). CHECKSUMS_FILE is the last file a checkpoint gets, so a folder without a
    readable one was cut short by the kill and is skipped; a complete one whose files do not match their
    checksums is corrupt (a truncated or overwritten file: resuming from it can train a NaN model)."""
    candidates = sorted(folder.glob("checkpoint-*"), key=lambda p: step_of(str(p)) or 0, reverse=True)
    for checkpoint in candidates:
        try:
            expected = json.loads((checkpoint / CHECKSUMS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(expected, dict):
            return None, f"{checkpoint / CHECKSUMS_FILE} is not a checksum list"
        for name, digest in sorted(expected.items()):
            file = checkpoint / name
            if not file.is_file():
                return None, f"{file} is missing from its checkpoint"
            if sha256_of(file) != digest:
                return None, f"{file} does not match its checksum (corrupt or modified since it was saved)"
        return str(checkpoint), None
    return None, None


class ChecksumCheckpoints(TrainerCallback):
    """Writes CHECKSUMS_FILE (sha256 of every file) into each checkpoint once the Trainer has saved it; the
    Trainer itself verifies nothing when it resumes, and a corrupt weights file with an intact header
    loads silently."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Under DDP every rank saves its own RNG state into the checkpoint: the saving process sums once all have.
        distributed.barrier()
        if not args.should_save:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        digests = {
            str(file.relative_to(checkpoint)): sha256_of(file)
            for file in sorted(checkpoint.rglob("*"))
            if file.is_file() and file.name != CHECKSUMS_FILE
        }
        with atomic_file(checkpoint / CHECKSUMS_FILE) as tmp:
            tmp.write_text(json.dumps(digests, indent=1), encoding="utf-8")
