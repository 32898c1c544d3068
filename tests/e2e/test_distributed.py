"""Data-parallel fine-tuning under torchrun (`finetune.distributed`): two CPU processes train the same
model as one process with the same global batch, in one MLflow run that a kill -9 does not break; two
machines meet at `rdzv_endpoint` (simulated by two launchers on localhost); only rank 0 writes outputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from builders import inside
from helpers import expect_user_error, free_port, raw_data, set_params, slow_steps_hook
from pipeline import paths, tracking
from pipeline.card import ModelCard
from pipeline.training.checkpoints import CHECKSUMS_FILE
from stages import finetune

# The second tier (`make test-e2e`): real DVC queues, torchrun, whole-DAG runs, HTTP servers.
pytestmark = pytest.mark.e2e

# Deterministic steps, so one process and two can be compared step by step: no dropout (each rank would
# draw its own masks) and plain random batches (length groups depend on the per-device batch size).
SCHEDULE = {
    "finetune.max_steps": 12,
    "finetune.eval_steps": 4,
    "finetune.logging_steps": 1,
    "finetune.early_stopping_patience": None,
    "finetune.group_by_length": False,
    "finetune.dropout": {"hidden": 0.0, "attention": 0.0, "classifier": 0.0},
}
GLOBAL_BATCH = 8
# Measured: the curves of one and two processes agree to 6e-8 (gradients averaged by all-reduce in another
# order, batches padded to another length); 1e-4 still catches a wrong batch, scale or lost step.
LOSS_TOLERANCE = 1e-4


def loss_curve(root: Path) -> dict[int, float]:
    with open(root / paths.TRAIN_LOGS / "plots" / "metrics" / "train" / "loss.tsv", newline="") as file:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(file, delimiter="\t")}


def stage(root: Path, env: dict[str, str], *args: str, **popen: object) -> subprocess.Popen:
    child_env = {**os.environ, **env}
    child_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "stages.finetune", *args],
        cwd=root,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def copy_with(tokenized: Path, root: Path, changes: dict[str, object]) -> Path:
    """A copy of the tokenized project at `root` with SCHEDULE and `changes` in its params."""
    shutil.copytree(tokenized, root)
    set_params(root, {**SCHEDULE, **changes})
    return root


@pytest.fixture(scope="module")
def one_process(tokenized: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process with the global batch."""
    one = {"finetune.per_device_train_batch_size": GLOBAL_BATCH}
    root = copy_with(tokenized, tmp_path_factory.mktemp("one") / "project", one)
    with inside(root, PIPELINE_CACHE_DIR=str(root.parent / "cache")):
        finetune.main()
    return root


def test_two_processes_killed_and_resumed_train_like_one_process_in_one_mlflow_run(
    one_process: Path, tokenized: Path, tmp_path: Path
) -> None:
    changes = {
        "finetune.per_device_train_batch_size": GLOBAL_BATCH // 2,
        "finetune.distributed.nproc_per_node": 2,
        # Each rank's batch runs as passes of one text (every pass all-reduces): the gradients sum the same.
        "finetune.max_tokens_per_pass": 1,
    }
    root = copy_with(tokenized, tmp_path / "project", changes)
    hook = slow_steps_hook(tmp_path / "hook", 0.5)
    env = {"PIPELINE_CACHE_DIR": str(tmp_path / "cache")}

    # Killed with SIGKILL, launcher and both workers at once, after its checkpoint at step 4.
    killed = stage(root, {**env, "PYTHONPATH": str(hook)}, start_new_session=True)
    marker = root / paths.CHECKPOINTS / "checkpoint-4" / CHECKSUMS_FILE
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (root / paths.MODEL).exists()
    rng_states = sorted(path.name for path in marker.parent.glob("rng_state*"))
    assert rng_states == ["rng_state_0.pth", "rng_state_1.pth"]  # each rank's, summed once both were written

    output = finished(stage(root, env))
    assert "resuming from checkpoints/checkpoint-4" in output, output
    assert output.count("finetune: full,") == 1  # one summary line: only rank 0 reports

    card = ModelCard.read(root / paths.MODEL)
    reference = ModelCard.read(one_process / paths.MODEL)
    assert (card.training.processes, card.training.global_train_batch_size) == (2, GLOBAL_BATCH)
    assert (reference.training.processes, reference.training.global_train_batch_size) == (1, GLOBAL_BATCH)
    assert card.training.resumed_from_step == 4 and card.training.global_step == 12

    two, one = loss_curve(root), loss_curve(one_process)
    assert sorted(two) == sorted(one) == list(range(1, 13))  # the steps before the kill are in the curve
    assert max(abs(two[step] - one[step]) for step in one) < LOSS_TOLERANCE, (two, one)
    assert card.training.best_metric == pytest.approx(reference.training.best_metric, abs=1e-6)

    with inside(root):
        mlflow.set_tracking_uri(tracking.tracking_uri())
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.run_id for run in runs] == [card.provenance.mlflow_run_id]  # the kill left no second run
    assert runs[0].data.params["global_train_batch_size"] == str(GLOBAL_BATCH)
    assert not (root / paths.CHECKPOINTS).exists()


def test_accumulated_batches_train_like_one_batch_of_their_size(
    one_process: Path, tokenized: Path, tmp_path: Path
) -> None:
    """Accumulation is the third factor of the global batch; the encoder's loss (a mean over its own
    micro-batch) is scaled for it, not summed over the micro-batches, and so is each pass's."""
    changes = {
        "finetune.per_device_train_batch_size": GLOBAL_BATCH // 2,
        "finetune.gradient_accumulation_steps": 2,
        "finetune.max_tokens_per_pass": 1,  # and each batch as passes of one text
    }
    root = copy_with(tokenized, tmp_path / "project", changes)
    with inside(root, PIPELINE_CACHE_DIR=str(tmp_path / "cache")):
        finetune.main()
    accumulated, one = loss_curve(root), loss_curve(one_process)
    assert max(abs(accumulated[step] - one[step]) for step in one) < LOSS_TOLERANCE, (accumulated, one)
    assert ModelCard.read(root / paths.MODEL).training.global_train_batch_size == GLOBAL_BATCH


def test_two_machines_meet_at_the_endpoint_and_only_node_0_keeps_outputs(tokenized: Path, tmp_path: Path) -> None:
    """Two checkouts stand for two machines; each starts its launcher, node 1 with `--node-rank 1`."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    changes = {
        "finetune.max_steps": 4,
        "finetune.per_device_train_batch_size": GLOBAL_BATCH // 2,
        "finetune.distributed.nnodes": 2,
        "finetune.distributed.rdzv_endpoint": f"127.0.0.1:{free_port()}",
    }
    for root in nodes:
        copy_with(tokenized, root, changes)
    env = {"PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    second = stage(nodes[1], env, "--node-rank", "1")
    first = stage(nodes[0], env)
    finished(first), finished(second)

    card = ModelCard.read(nodes[0] / paths.MODEL)
    assert (card.training.processes, card.training.global_train_batch_size) == (2, GLOBAL_BATCH)
    assert card.training.global_step == 4
    left_on_node_1 = sorted(str(path.relative_to(nodes[1])) for path in nodes[1].rglob("*"))
    assert left_on_node_1 == sorted(str(path.relative_to(tokenized)) for path in tokenized.rglob("*"))


# Run by torchrun in each process: each (project, method) trains, validates and saves under DDP.
EVERY_TASK_AND_METHOD = """
import os
import sys
from pathlib import Path
from pipeline import data, paths
from pipeline.training import distributed
from pipeline.params import load_params
from pipeline.training.trainer import fit, prepare

for run in sys.argv[1:]:
    project, method = run.rsplit(":", 1)
    os.chdir(project)
    params = load_params()
    distributed.init_process_group(params.finetune.distributed)
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    datasets = data.load_tokenized(paths.TOKENIZED)
    finetune = params.finetune.model_copy(update={"method": method})
    variant = params.model_copy(update={"finetune": finetune})
    out = Path("out") / method
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(variant, datasets, labels, Path("checkpoints") / method)
    card = fit(variant, prepared, out if distributed.is_main() else None)
    if card is not None:
        print(f"{Path(project).name} {method}: {card.training.global_step} steps, {card.training.processes} processes")
"""
METHODS = ("full", "freeze", "lora", "dora", "adalora", "prefix", "ia3")


def task_projects(base: Path, tiny_model: Path, tiny_llama: Path) -> dict[str, Path]:
    """A tokenized tiny project of each task besides single-label, from the data builders of its tests."""
    from builders import (
        NER_PARAMS,
        PAIR_PARAMS,
        PROMPT,
        label_set_rows,
        make_project,
        pair_rows,
        write_conll,
        write_responses,
        write_sentiment_tsv,
    )
    from stages import ingest, split, tokenize

    sets = base / "sets.jsonl"
    sets.write_text("".join(json.dumps({"text": t, "topics": labels}) + "\n" for t, labels in label_set_rows(60)))
    pair_rows(80).to_csv(base / "pairs.csv", index=False)
    as_jsonl = {"ingest.format": "jsonl", "ingest.score_to_label": None, "ingest.column_names": None}
    # A Llama config has no dropout of BERT's names: as pretrained.
    decoder = {
        "model.source": str(tiny_llama),
        "tokenize.max_length": 48,
        "finetune.dropout": {"hidden": None, "attention": None, "classifier": None},
    }
    changes = {
        "multi_label_classification": {
            "task": "multi_label_classification",
            "ingest.source": str(sets),
            "ingest.label_column": "topics",
            "finetune.metric_for_best_model": "micro_f1",
            **as_jsonl,
        },
        "token_classification": {**NER_PARAMS, "ingest.source": str(write_conll(base / "conll"))},
        "text_pairs": {**PAIR_PARAMS, "ingest.source": str(base / "pairs.csv")},
        "generative_classification": {"task": "generative_classification", "tokenize.prompt": PROMPT, **decoder},
        "text_generation": {
            "task": "text_generation",
            "ingest.source": str(write_responses(base / "responses.jsonl", n=60)),
            "ingest.text_column": "review",
            "ingest.label_column": "summary",
            "tokenize.prompt": {"template": "review : {text}", "max_new_tokens": 4},
            "finetune.metric_for_best_model": "loss",
            **as_jsonl,
            **decoder,
        },
    }
    projects = {}
    for task, task_changes in changes.items():
        root = make_project(base / task, write_sentiment_tsv(base / f"{task}.tsv", n=60), tiny_model)
        if "ingest.source" in task_changes:  # the task's own data, into the project's data/raw/
            task_changes["ingest.source"] = raw_data(root, Path(task_changes["ingest.source"]))
        set_params(root, {**SCHEDULE, "finetune.max_steps": 2, "finetune.eval_steps": 2, **task_changes})
        with inside(root, PIPELINE_CACHE_DIR=str(base / "cache")):
            for stage in (ingest, split, tokenize):
                stage.main()
        projects[task] = root
    return projects


def test_every_task_and_method_trains_under_ddp(
    tokenized: Path, tiny_model: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    single_label = tmp_path / "single_label"
    shutil.copytree(tokenized, single_label)
    set_params(single_label, {**SCHEDULE, "finetune.max_steps": 4, "finetune.eval_steps": 2})
    # A mean-pooled head leaves the pooler unused: DDP stops on a trained parameter without a gradient.
    mean_pooled = tmp_path / "mean_pooled"
    shutil.copytree(single_label, mean_pooled)
    set_params(mean_pooled, {"finetune.classifier_pooling": "mean"})
    projects = task_projects(tmp_path, tiny_model, tiny_llama)
    runs = [f"{single_label}:{method}" for method in METHODS] + [f"{mean_pooled}:full"]
    runs += [f"{projects[task]}:{'lora' if 'generat' in task else 'full'}" for task in projects]
    script = tmp_path / "every_task_and_method.py"
    script.write_text(EVERY_TASK_AND_METHOD)
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    done = subprocess.run([*command, *runs], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    expected = [f"single_label {method}: 4 steps, 2 processes" for method in METHODS]
    expected += ["mean_pooled full: 4 steps, 2 processes"]
    expected += [f"{task} {'lora' if 'generat' in task else 'full'}: 2 steps, 2 processes" for task in projects]
    assert [line for line in done.stdout.splitlines() if "processes" in line] == expected


def test_a_node_rank_outside_nnodes_or_nccl_without_enough_gpus_is_refused_naming_it(
    tokenized_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    assert "--node-rank 1: finetune.distributed.nnodes is 1" in expect_user_error(
        lambda: finetune.main(["--node-rank", "1"]), capsys
    )

    processes = max(2, torch.cuda.device_count() + 1)
    set_params(
        tokenized_project, {"finetune.distributed.backend": "nccl", "finetune.distributed.nproc_per_node": processes}
    )
    assert "finetune.distributed: nccl runs one process per GPU" in expect_user_error(finetune.main, capsys)
    assert not (tokenized_project / paths.MODEL).exists()
