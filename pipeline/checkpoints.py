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
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.params import FinetuneParams

RUN_FILE = "run.json"


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
    if params.method == "adalora":
        # peft keeps AdaLoRA's importance scores (which decide the ranks) outside the checkpoint and saves
        # its adapters already pruned, so no checkpoint can continue the same run: start over, and say so.
        print(
            f"finetune: {folder} holds an interrupted AdaLoRA run, which cannot be resumed (its rank "
            f"allocator is not checkpointed); training from the start",
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
    """(checkpoint, problem). trainer_state.json is the last file a checkpoint gets, so a folder without a
    readable one was cut short by the kill and is skipped; a complete one whose weights or optimizer state
    do not read is corrupt."""
    candidates = sorted(folder.glob("checkpoint-*"), key=lambda p: step_of(str(p)) or 0, reverse=True)
    for checkpoint in candidates:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for file in sorted(checkpoint.iterdir()):
            try:
                if file.suffix == ".safetensors":
                    from safetensors import safe_open

                    with safe_open(str(file), "pt"):
                        pass
                elif file.suffix in (".pt", ".pth", ".bin"):
                    zipfile.ZipFile(file).close()  # torch.save writes a zip; a cut file has no directory
            except Exception as exc:  # safetensors and zipfile each raise their own types
                return (
                    None,
                    f"{file} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                )
        return str(checkpoint), None
    return None, None
