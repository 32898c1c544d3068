"""Time to accuracy: training wall time until test accuracy first reaches a target, for the HF Trainer a
careful user would write and for the pipeline's training (defaults, and variants of its params).

Contenders, each trained from the same pretrained model (params.yaml `model`) on the split and tokenized data
of the last `dvc repro` (data/split, data/tokenized):

  hf-careful     Trainer with dynamic padding and length-grouped batches, lr 5e-5, batch 16, 3 epochs
                 (transformers' defaults otherwise: no warm-up, no weight decay, no evaluation, no checkpoints)
  pipeline       pipeline.training.trainer.prepare with the finetune params, exactly what `dvc repro` trains: its
                 per-epoch validation, checkpoints and early stopping are part of its time
  NAME           the pipeline with params changed: --variant "NAME:finetune.key=value,finetune.other=value"

Every contender's test accuracy is measured in fp32, as evaluate serves the model, every `--every` training
examples (the same data interval for all, whatever the batch size); the clock stops while it is measured.
Each contender runs in a process of its own, one after the other, so peak RSS is its own and none shares the
cores. Prints the curves, the time to `--target` of each, the ratios to hf-careful and each contender's final
test accuracy (the model it ends with: the pipeline's best checkpoint), and writes
reports/benchmarks/time_to_accuracy.json.

    python -m benchmarks.time_to_accuracy --target 0.85 \\
        --variant "frozen-embeddings:finetune.freeze_word_embeddings=true"
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

from benchmarks.results import child_result, load_average, write_results
from pipeline import data, paths
from pipeline.params import load_params
from pipeline.tasks.training import HOOKS
from pipeline.training.modeling import load_for_training, load_tokenizer, resolve_model
from pipeline.training.trainer import prepare

HF_CAREFUL = {"learning_rate": 5e-5, "per_device_train_batch_size": 16, "num_train_epochs": 3}


class TestAccuracyCurve(TrainerCallback):
    """Test accuracy every `every` training examples, with the training clock stopped while measuring."""

    def __init__(self, test: Any, tokenizer: Any, every: int, examples_per_step: int) -> None:
        order = np.argsort(test["length"], kind="stable")
        self.batches = [
            (tokenizer.pad({"input_ids": [test["input_ids"][i] for i in chunk]}, return_tensors="pt"), chunk)
            for chunk in np.array_split(order, max(1, len(order) // 128))
        ]
        self.labels = np.asarray(test["labels"])
        self.every, self.examples_per_step = every, examples_per_step
        self.rows: list[dict[str, float]] = []
        self.started = self.paused = 0.0
        self.next_mark = every

    def accuracy(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        # In fp32, as evaluate and serving run the saved model. Under bf16 training, accelerate wraps
        # `model.forward` in autocast and keeps the plain one as `_original_forward`; measuring through the
        # wrapper would also fill oneDNN's kernel cache with these shapes and evict the training step's
        # kernels, slowing the steps after each measurement (seen: 355 vs 314 s for one run).
        forward = getattr(model, "_original_forward", model)
        predicted = np.empty(len(self.labels), dtype=int)
        with torch.inference_mode():
            for batch, chunk in self.batches:
                predicted[chunk] = forward(**batch).logits.argmax(-1).numpy()
        model.train(was_training)
        return float((predicted == self.labels).mean())

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        examples = state.global_step * self.examples_per_step
        if examples < self.next_mark:
            return
        stopped = time.perf_counter()
        accuracy = self.accuracy(model)
        self.rows.append(
            {
                "step": state.global_step,
                "examples": examples,
                "train_seconds": round(stopped - self.started - self.paused, 2),
                "accuracy": accuracy,
            }
        )
        self.paused += time.perf_counter() - stopped
        self.next_mark += self.every


def run_contender(name: str, overrides: dict[str, Any], every: int) -> dict[str, Any]:
    """Train one contender in this process; its curve, final accuracy, wall time and peak RSS."""
    params = load_params(overrides=overrides)
    task = HOOKS.for_task(params.task)
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    encoded = data.load_tokenized(paths.TOKENIZED)  # what `dvc repro` trained on (run it first)
    model_dir = resolve_model(params.model)
    tokenizer = load_tokenizer(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        if name == "hf-careful":
            set_seed(params.seed)
            model = load_for_training(model_dir, task, labels, classifier_pooling="cls")  # transformers' own head
            args = TrainingArguments(
                output_dir=scratch,
                **HF_CAREFUL,
                train_sampling_strategy="group_by_length",
                eval_strategy="no",
                save_strategy="no",
                logging_strategy="no",
                report_to=[],
                disable_tqdm=True,
                seed=params.seed,
                data_seed=params.seed,
                dataloader_pin_memory=False,
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=encoded["train"],
                data_collator=DataCollatorWithPadding(tokenizer),
                processing_class=tokenizer,
            )
        else:
            trainer = prepare(params, encoded, labels, Path(scratch)).trainer
        batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
        curve = TestAccuracyCurve(encoded["test"], tokenizer, every, batch)
        trainer.add_callback(curve)
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started - curve.paused
        final = curve.accuracy(trainer.model)  # the pipeline's best checkpoint (load_best_model_at_end)
    return {
        "name": name,
        "overrides": overrides,
        "batch_size": batch,
        "steps": trainer.state.global_step,
        "train_seconds": round(wall, 1),
        "final_accuracy": final,
        # The pipeline's selection criterion: validation accuracy of the checkpoint it kept (none for hf-careful).
        "best_validation": trainer.state.best_metric,
        "curve": curve.rows,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, changes = text.partition(":")
    overrides = {}
    for change in filter(None, changes.split(",")):
        key, _, value = change.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def time_to(target: float, curve: list[dict[str, float]]) -> float | None:
    return next((row["train_seconds"] for row in curve if row["accuracy"] >= target), None)


def summarise(name: str, runs: list[dict[str, Any]], reference: float | None) -> dict[str, Any]:
    """One contender over its seeds: the median time to the target (a seed that never reached it counts as
    infinitely slow), the ratio of that median to `reference` (hf-careful's median; None: this is
    hf-careful, ratio 1), and the mean and range of final accuracy."""
    times = [run["seconds_to_target"] if run["seconds_to_target"] is not None else float("inf") for run in runs]
    median = float(np.median(times))
    finals = [run["final_accuracy"] for run in runs]
    validations = [run["best_validation"] for run in runs if run["best_validation"] is not None]
    return {
        "name": name,
        "seeds": [run["seed"] for run in runs],
        "median_seconds_to_target": round(median, 1) if np.isfinite(median) else None,
        "ratio_to_hf_careful": round(median / (reference or median), 3) if np.isfinite(median) and median else None,
        "mean_final_accuracy": round(float(np.mean(finals)), 4),
        "final_accuracy_range": [min(finals), max(finals)],
        "mean_best_validation": round(float(np.mean(validations)), 4) if validations else None,
        "max_peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.85, help="test accuracy to reach")
    parser.add_argument("--every", type=int, default=1600, help="training examples between test measurements")
    parser.add_argument("--variant", action="append", default=[], help='"NAME:finetune.key=value,..." (repeatable)')
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="training seeds (head initialisation, data order, dropout; the split stays as tokenized): each "
        "contender trains once per seed and is summarised by its median time and mean final accuracy; "
        "default: params.yaml's seed",
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one contender, print its JSON
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:
        print("RESULT " + json.dumps(run_contender(args.only, json.loads(args.overrides), args.every)))
        return

    started, load_before = time.perf_counter(), load_average()
    seeds = args.seeds or [load_params().seed]
    contenders = [("hf-careful", {}), ("pipeline", {}), *map(parse_variant, args.variant)]
    results = []
    for name, overrides in contenders:
        for seed in seeds:
            command = [
                sys.executable,
                "-m",
                "benchmarks.time_to_accuracy",
                "--only",
                name,
                "--overrides",
                json.dumps({**overrides, "seed": seed}),
            ]
            result = {**child_result(command + ["--every", str(args.every)], f"{name} (seed {seed})"), "seed": seed}
            result["seconds_to_target"] = time_to(args.target, result["curve"])
            results.append(result)
            print(
                f"{name:<20} seed {seed}: to {args.target}: {result['seconds_to_target']} s; final accuracy "
                f"{result['final_accuracy']:.4f} after {result['train_seconds']} s; best validation "
                f"{result['best_validation']}; peak RSS {result['peak_rss_mib']} MiB",
                flush=True,
            )
    careful = summarise("hf-careful", results[: len(seeds)], None)
    reference = careful["median_seconds_to_target"]
    summary = [careful] + [
        summarise(name, [r for r in results if r["name"] == name], reference) for name, _ in contenders[1:]
    ]
    print(
        f"\ntime to test accuracy {args.target} (training seconds, evaluation excluded), median of seeds {seeds}; "
        "ratio to hf-careful's median"
    )
    for row in summary:
        low, high = row["final_accuracy_range"]
        print(
            f"{row['name']:<20} {row['median_seconds_to_target']!s:>8} s  {row['ratio_to_hf_careful']!s:>6}x  "
            f"final {row['mean_final_accuracy']:.4f} ({low:.4f}-{high:.4f})  best validation "
            f"{row['mean_best_validation']}  peak RSS {row['max_peak_rss_mib']} MiB"
        )
    target = write_results(
        "time_to_accuracy",
        "python -m benchmarks.time_to_accuracy " + " ".join(sys.argv[1:]),
        results,
        started,
        load_before=load_before,
        summary=summary,
        seeds=seeds,
        target_accuracy=args.target,
        every_examples=args.every,
    )
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()
