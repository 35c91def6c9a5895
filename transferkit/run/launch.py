"""`transferkit run --nproc N`: start torchrun's own launcher (torch.distributed.run) on this machine.

The launcher starts N copies of `python -m transferkit run ...` with RANK/WORLD_SIZE/LOCAL_RANK set,
forwards SIGINT/SIGTERM to them, and ends the others when one dies; this module turns its outcome into
an exit code and one line naming the failed rank.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
from pathlib import Path

from transferkit.errors import TransferkitError

NPROC_ENV = "TRANSFERKIT_NPROC"  # set for the workers, so the primary's resume line repeats --nproc


def run_words(recipe: str, overrides: list[str] = (), variants: list[str] = (), device: str | None = None) -> list[str]:
    """The `transferkit run` arguments that name what runs: every process repeats them, and so does a resume."""
    return ["run", recipe, *[w for s in overrides for w in ("--set", s)], *[w for v in variants for w in ("--variant", v)],
            *(["--device", device] if device else [])]


def worker_words(words: list[str], output: str | Path | None = None, resume: str | None = None,
                 progress: bool = True) -> list[str]:
    """The arguments `--nproc N` hands each process under torchrun: `words` and where and how it runs."""
    return [*words, *(["--output", str(output)] if output else []), *(["--resume", resume] if resume else []),
            *([] if progress else ["--no-progress"])]


def resume_command(words: list[str], run_root: Path) -> str:
    """The shell line that continues `run_root`, started the way this process was (`--nproc`, torchrun or plain)."""
    command = ["transferkit", *words, "--resume", str(run_root)]
    if os.environ.get(NPROC_ENV):  # started by `--nproc N`
        command += ["--nproc", os.environ[NPROC_ENV]]
    elif "WORLD_SIZE" in os.environ:  # started by torchrun itself
        command = ["torchrun", "--nproc-per-node", os.environ.get("LOCAL_WORLD_SIZE", "1"), "-m", *command]
    return shlex.join(command)


def check_processes(experiment, nproc: int) -> None:
    """TransferkitError unless every variant's batch divides over `nproc` processes and the device checks pass for
    them (streamed shards: one for each process and loader worker)."""
    from transferkit.run.validation import check_device

    if nproc < 1:
        raise TransferkitError(f"--nproc {nproc}: give 1 or more processes")
    for name in experiment.variant_names:
        check_device(experiment.variant_spec(name), processes=nproc)


def torchrun_args(nproc: int, args: list[str]) -> list[str]:
    """torchrun's arguments for N processes on this machine running `transferkit ARGS`."""
    return ["--standalone", "--nproc-per-node", str(nproc), "-m", "transferkit", *args]


def launch(nproc: int, args: list[str], report) -> int:
    """Run `transferkit ARGS` in `nproc` processes under torchrun; the exit code for the whole job.

    `report(line)` gets one line when a process fails (its rank, and how it ended). A process that exits
    with 2 or 130 (a user error, an interruption) has printed its own message already.
    """
    if nproc < 1:
        raise TransferkitError(f"--nproc {nproc}: give 1 or more processes")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    os.environ[NPROC_ENV] = str(nproc)
    try:
        run(parse_args(torchrun_args(nproc, args)))
    except SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        code = failure.exitcode
        if code in (2, 130):
            return code
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        report(f"rank {rank} of {nproc} {how}; torchrun stopped the other processes; "
               f"continue from the last checkpoint with --resume auto")
        return 1
    return 0
