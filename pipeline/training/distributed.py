"""Data-parallel fine-tuning under torchrun, PyTorch's launcher.

With more than one process (`finetune.distributed`), the finetune stage starts itself again under torchrun
(`launch`), which runs one copy per process and sets RANK / WORLD_SIZE / LOCAL_RANK; the HF Trainer then
trains with DistributedDataParallel. Rank 0 decides what to resume, logs to MLflow, writes checkpoints and
the outputs; the other ranks train in step and write nothing of their own (the Trainer's per-rank RNG
state file in each checkpoint aside, which resuming needs). Over several machines the first process of
each keeps checkpoints in its own checkout, so no shared filesystem is needed.

On one machine torchrun picks a free port itself (`--standalone`). On several, torchrun's static
rendezvous fixes which machine is node 0: the one that runs `dvc repro` and keeps the outputs, at
`rdzv_endpoint`; node k runs `python -m stages.finetune --node-rank k`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from pipeline.errors import EXIT_USER_ERROR, PipelineError
from pipeline.schema import DistributedParams

T = TypeVar("T")

LAUNCHER_PID = "PIPELINE_TORCHRUN_LAUNCHER_PID"


def launched() -> bool:
    """True inside a process that torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_launch(params: DistributedParams) -> bool:
    return params.processes > 1 and not launched()


def torchrun_arguments(params: DistributedParams, module: str, node_rank: int = 0) -> list[str]:
    """torchrun's command line (without `torchrun` itself) that runs `python -m module` in every process."""
    if params.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        host, port = params.rdzv_endpoint.rsplit(":", 1)
        rendezvous = [
            "--rdzv-backend=static",
            f"--master-addr={host}",
            f"--master-port={port}",
            f"--node-rank={node_rank}",
        ]
    return [
        f"--nnodes={params.nnodes}",
        f"--nproc-per-node={params.nproc_per_node}",
        *rendezvous,
        "--max-restarts=0",  # a failed process fails the stage; `dvc repro` again resumes from the checkpoint
        "-m",
        module,
    ]


def launch(params: DistributedParams, module: str, node_rank: int = 0) -> None:
    """Run `python -m module` under torchrun and end this process with its outcome: exit code 2 (the
    workers printed the one-line error) when a worker stopped on bad input, another non-zero code when
    one failed otherwise."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    gpus = torch.cuda.device_count()
    if backend(params) == "nccl" and gpus < params.nproc_per_node:
        raise PipelineError(
            f"finetune.distributed: nccl runs one process per GPU; {params.nproc_per_node} processes asked, "
            f"{gpus} GPU(s) here (set backend: gloo, or fewer processes)"
        )
    arguments = torchrun_arguments(params, module, node_rank)
    if not torch.cuda.is_available():
        # One thread per process on CPU: the processes share the cores (torchrun would say so in a warning).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[LAUNCHER_PID] = str(os.getpid())  # torchrun's agent runs in this process: the workers' parent
    print(f"finetune: torchrun {' '.join(arguments)}", file=sys.stderr, flush=True)
    try:
        run(get_args_parser().parse_args(arguments))
    except ChildFailedError as error:
        codes = [failure.exitcode for failure in error.failures.values()]
        sys.exit(EXIT_USER_ERROR if EXIT_USER_ERROR in codes else max(1, *codes))


def backend(params: DistributedParams) -> str:
    if params.backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return params.backend


def init_process_group(params: DistributedParams) -> None:
    """Join the other processes (inside torchrun); the Trainer then uses this group as it is."""
    if not launched() or dist.is_initialized():
        return
    _end_with_the_launcher()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend(params))


def _end_with_the_launcher() -> None:
    """torchrun starts each worker in a session of its own, so a kill -9 of the stage (or of `dvc repro`)
    would leave the workers training on as orphans, racing the next run for the checkpoints. Linux can
    end a process with its parent; torchrun has no option for it, hence this."""
    if sys.platform != "linux" or LAUNCHER_PID not in os.environ:
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(os.environ[LAUNCHER_PID]):  # the launcher died before the line above
        os._exit(1)


def is_main() -> bool:
    """Rank 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def is_node_leader() -> bool:
    """The first process on its machine (it keeps that machine's checkpoints)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def decided_by_main(decide: Callable[[], T]) -> T:
    """`decide()` on rank 0, its answer on every rank: one process inspects and cleans shared files."""
    if not dist.is_initialized():
        return decide()
    answer = [decide() if is_main() else None]
    dist.broadcast_object_list(answer, src=0)
    return answer[0]  # type: ignore[return-value]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
