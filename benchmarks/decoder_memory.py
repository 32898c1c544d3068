"""A decoder's training memory: peak RSS and seconds per step with and without activation checkpointing.

Trains a decoder preset (default presets/sentiment-smollm2.yaml: SmolLM2-135M-Instruct with LoRA, batch 16,
prompts up to its tokenize.max_length) for `--steps` optimizer steps on the default training split
(data/split of the last `dvc repro`, the split that preset reads), exactly as the finetune stage sets it up
(pipeline.training.trainer.prepare), once with `finetune.activation_checkpointing` off and once on. Each runs in a
process of its own, one after the other, so peak RSS is its own and none shares the cores. The first step
is not timed (allocator and kernel warm-up). Prints seconds per step, peak RSS and the ratios of the
checkpointed run to the plain one, and writes reports/benchmarks/decoder_memory.json.

    python -m benchmarks.decoder_memory --steps 8
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

from transformers import TrainerCallback

from benchmarks.results import child_result, load_average, write_results
from pipeline import data, paths
from pipeline.params import load_params
from pipeline.tasks.encoding import ENCODERS
from pipeline.training.modeling import load_tokenizer, resolve_model
from pipeline.training.trainer import prepare


class StepClock(TrainerCallback):
    """The wall time at the end of each optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def run_setting(preset: Path, steps: int, checkpointing: bool) -> dict[str, Any]:
    """Train `steps` steps of the preset in this process; seconds per step after the first and peak RSS."""
    params = load_params(
        preset,
        overrides={
            "finetune.max_steps": steps,
            "finetune.eval_steps": steps + 1,  # no evaluation inside the measured steps
            "finetune.activation_checkpointing": checkpointing,
        },
    )
    task = ENCODERS.for_task(params.task)
    labels = data.read_json(paths.SPLIT / "labels.json")["labels"]
    tokenizer = load_tokenizer(resolve_model(params.model))
    batch = params.finetune.per_device_train_batch_size * params.finetune.gradient_accumulation_steps
    train = data.read_table(paths.SPLIT / "train.parquet").head(steps * batch)
    validation = data.read_table(paths.SPLIT / "validation.parquet").head(batch)
    encoded = {
        "train": task.encode(train, labels, tokenizer, params.tokenize),
        "validation": task.encode(validation, labels, tokenizer, params.tokenize),
    }
    with tempfile.TemporaryDirectory() as scratch:
        trainer = prepare(params, encoded, labels, Path(scratch)).trainer
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
    timed = clock.ends[1:]
    return {
        "activation_checkpointing": checkpointing,
        "steps": len(clock.ends),
        "batch_size": batch,
        "max_length": params.tokenize.max_length,
        "seconds_per_step": round((timed[-1] - clock.ends[0]) / len(timed), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=Path("presets/sentiment-smollm2.yaml"), help="a decoder preset")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per setting (the first is not timed)")
    parser.add_argument("--only", choices=["off", "on"], help=argparse.SUPPRESS)  # internal: one setting, as JSON
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first step is not timed)")

    if args.only:
        print("RESULT " + json.dumps(run_setting(args.preset, args.steps, args.only == "on")))
        return

    started, load_before = time.perf_counter(), load_average()
    results = []
    for setting in ("off", "on"):
        command = [sys.executable, "-m", "benchmarks.decoder_memory", "--only", setting, "--preset", str(args.preset)]
        results.append(child_result(command + ["--steps", str(args.steps)], f"activation checkpointing {setting}"))
        print(f"activation checkpointing {setting}: {results[-1]}", flush=True)
    plain, checkpointed = results
    ratios = {
        "rss_ratio": round(checkpointed["peak_rss_mib"] / plain["peak_rss_mib"], 3),
        "step_time_ratio": round(checkpointed["seconds_per_step"] / plain["seconds_per_step"], 3),
    }
    print(
        f"\nwith activation checkpointing: peak RSS {ratios['rss_ratio']}x, seconds per step "
        f"{ratios['step_time_ratio']}x (batch {plain['batch_size']}, {args.preset})"
    )
    target = write_results(
        "decoder_memory",
        "python -m benchmarks.decoder_memory " + " ".join(sys.argv[1:]),
        results,
        started,
        load_before=load_before,
        **ratios,
        preset=str(args.preset),
    )
    print(f"written to {target}")


if __name__ == "__main__":
    main()
