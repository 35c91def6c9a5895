"""`transferkit tune`: one Optuna study over the recipe's `tune.space`, run by one or many processes.

Each process (the command's own, the `--jobs` it starts, or other commands on the same `--storage`) repeats: take
this machine's turn, mark failed the trials whose process is gone, stop if the study holds N trials (complete,
pruned or running), else start one; the turn ends as the trial starts. So together they run exactly N, and a
re-run of the same command continues the study up to N. Trials of one study share a cache folder of decoded
images and features (data/shared_cache.py).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from transferkit.data.shared_cache import shared_caches
from transferkit.errors import SpecError, TransferkitError
from transferkit.progress import Progress
from transferkit.recipe.load import Recipe, read_recipe
from transferkit.recipe.messages import key_line, yaml_line_of
from transferkit.recipe.spec import ExperimentSpec, parse_duration
from transferkit.rundir import differences
from transferkit.tune.folder import StudyFolder
from transferkit.tune.liveness import fail_orphans, this_worker
from transferkit.tune.pruning import make_pruner
from transferkit.tune.space import point_recipe
from transferkit.tune.storage import Storage, open_storage
from transferkit.tune.trial import TrialFailed, TrialInterrupted, Trials

FAILURES_IN_A_ROW = 3  # a worker stops after this many failed trials in a row: something fails every trial


@dataclass
class TuneSettings:
    """What `transferkit tune` was asked: the recipe, how many trials, where the study lives, how many processes."""

    recipe: str
    trials: int
    overrides: list[str] = field(default_factory=list)
    timeout: str | None = None  # no new trial starts after it (30m, 2h)
    storage: str | None = None  # None: the journal file in the study folder
    study: str | None = None  # default: the recipe's name
    jobs: int = 1
    keep_best: int | None = 3  # None: every trial keeps its checkpoints
    output: str | Path | None = None  # default: <output_dir>/<study>-tune
    cache: str | Path | None = None  # default: the study folder's cache/
    device: str | None = None


@dataclass
class Prepared:
    """A study ready for a worker: the validated recipe, the shared trial settings, the storage and the study."""

    settings: TuneSettings
    spec: ExperimentSpec
    trials: Trials
    storage: Storage
    study: object  # optuna.Study


def _quiet_optuna() -> None:
    """Optuna's own per-trial log lines off (tune prints its own); its experimental-feature warnings too."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def objective_of(spec: ExperimentSpec, recipe: Recipe) -> tuple[str, str]:
    """(the metric the study optimises, "max" or "min"): tune.metric resolved; SpecError when the task has no
    such metric or the data no validation split."""
    from transferkit.run.assemble import load_splits
    from transferkit.tasks import task_class

    task = task_class(spec.task.name)
    metric = spec.tune.metric
    if metric == "auto":
        chosen = spec.train.best_metric
        metric = chosen if chosen.startswith("val_") else f"val_{task.default_metric}"
    name = metric.removeprefix("val_")
    if name not in task.metrics:
        line = yaml_line_of(recipe.text, ("tune", "metric"))
        raise SpecError(f"{recipe.source}{line}: tune.metric: {task.name} reports {', '.join(sorted(task.metrics))}; "
                        f"use val_ and one of them (e.g. val_{task.default_metric})")
    if not load_splits(spec).val:
        raise SpecError(f"{recipe.source}: tune.metric {metric} needs a validation split, and the data has none; set "
                        f"data.val_split: 0.1 (or add a val/ folder): the search must never select on the test split")
    return metric, task.metrics[name]


def check_choices(recipe: Recipe) -> None:
    """Every choice that is not a number through the environment phase (registered names, weights that fit the
    backbone), so a choice no trial could run is refused now, naming its line, rather than failing trial after
    trial. (Numbers were tried against their key's schema when the recipe was read.)"""
    from transferkit.run.validation import validate_dict

    for key, param in recipe.spec.tune.space.items():
        for choice in param.choices or ():
            if isinstance(choice, (int, float)) and not isinstance(choice, bool):
                continue
            try:
                validate_dict(point_recipe(recipe.raw, {key: choice}))
            except TransferkitError as exc:
                line = key_line(recipe.text, ("tune", "space", key))
                raise SpecError(f"{recipe.source}{line}: tune.space.{key}: choice {choice!r} cannot run: "
                                f"{str(exc).removeprefix('recipe: ')}") from None


def fingerprint(spec: ExperimentSpec, metric: str) -> dict:
    """What a continued study must share with its start: the recipe (without tune), the space and the metric."""
    return {"recipe": spec.model_dump(mode="json", exclude={"tune", "variants"}), "metric": metric,
            "space": {key: param.model_dump() for key, param in spec.tune.space.items()}}


def check_same_study(study, mine: dict, name: str, where: str) -> None:
    """TransferkitError when study `name` was started with another space, metric or recipe; a study without a
    fingerprint (new, or made with Optuna directly, e.g. to enqueue trials) is given this one."""
    saved = study.user_attrs.get("transferkit")
    if saved is None:
        study.set_user_attr("transferkit", mine)
        return
    fix = f"use --study NEW_NAME (or another --output) for a new study, or run the recipe study '{name}' began with"
    for part in ("space", "metric"):
        if saved[part] != mine[part]:
            raise TransferkitError(f"study '{name}' in {where} was started with another tune.{part} "
                                   f"({saved[part]}); {fix}")
    changed = [line.replace(" in the run, ", " in the study, ")
               for line in differences(saved["recipe"], mine["recipe"])]
    if changed:
        raise TransferkitError(f"study '{name}' in {where} was started with other settings: "
                               f"{'; '.join(changed[:5])}; {fix}")


def prepare(settings: TuneSettings) -> Prepared:
    """Read and validate the recipe (every phase, the space and each of its choices), open the storage and create
    the study, or load it when it exists and was started with the same recipe."""
    import optuna

    from transferkit.run.validation import run_phases

    _quiet_optuna()
    if settings.trials < 1:
        raise TransferkitError(f"--trials {settings.trials}: give the number of trials the study should hold, e.g. 20")
    recipe = read_recipe(settings.recipe, settings.overrides)
    spec = run_phases(recipe)
    if spec.tune is None or not spec.tune.space:
        raise SpecError(f"{recipe.source}: no tune.space to search; add a tune: section with the keys to search, "
                        f"e.g. tune: {{space: {{optimizer.lr: {{low: 1.0e-4, high: 1.0e-1, log: true}}}}}} "
                        f"(docs/tuning.md)")
    check_choices(recipe)
    metric, better = objective_of(spec, recipe)
    name = settings.study or spec.name
    folder = StudyFolder(settings.output or Path(spec.output_dir) / f"{name}-tune")
    storage = open_storage(settings.storage, folder.journal)
    folder.claim(name, storage.where)
    study = optuna.create_study(storage=storage.optuna, study_name=name, load_if_exists=True,
                                direction="minimize" if better == "min" else "maximize",
                                pruner=make_pruner(spec.tune),
                                sampler=optuna.samplers.TPESampler(n_startup_trials=spec.tune.sampler_startup_trials))
    wanted = "MINIMIZE" if better == "min" else "MAXIMIZE"
    if study.direction.name != wanted:
        raise TransferkitError(f"study '{name}' in {storage.where} is set to {study.direction.name.lower()}, and "
                               f"{metric} is better {'lower' if better == 'min' else 'higher'}; use --study NEW_NAME "
                               f"for a new study")
    check_same_study(study, fingerprint(spec, metric), name, storage.where)
    trials = Trials(name, recipe.raw, spec.tune.space, metric, better, spec.tune.pruner, folder, settings.device)
    return Prepared(settings, spec, trials, storage, study)


class Turn:
    """This machine's turn to count the study's trials and start one: an exclusive lock on a file, released as
    soon as the trial has started (or when the block ends)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        """End the turn (once)."""
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "Turn":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def held(study) -> int:
    """Trials that count towards N: complete, pruned and running (failed ones are replaced)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def keep_best_checkpoints(study, folder: StudyFolder, keep: int | None) -> int:
    """Delete the checkpoints of every finished trial but the best `keep` complete ones; the bytes freed."""
    from optuna.trial import TrialState

    if keep is None:
        return 0
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    complete = sorted((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value,
                      reverse=study.direction.name == "MAXIMIZE")
    kept = {t.number for t in complete[:keep]}
    return sum(folder.trial(t.number).remove_checkpoints(f"not among the best {keep} trials (--keep-best {keep})")
               for t in done if t.number not in kept and folder.trial(t.number).path.is_dir())


def _mark_orphan(folder: StudyFolder, trial, console: Console) -> None:
    """The folder of a trial whose process is gone says it failed, and why."""
    worker = trial.user_attrs.get("worker", "?")
    reason = (f"its process ({worker}) ended without finishing it (killed or crashed); marked failed by "
              f"{this_worker()}")
    trial_folder = folder.trial(trial.number)
    if trial_folder.path.is_dir():
        trial_folder.record(state="FAIL", reason=reason)
    console.print(f"trial {trial.number}: failed: {reason}", highlight=False, soft_wrap=True)


@dataclass
class WorkerOutcome:
    """How one worker's loop ended: the trials it ran, and why it stopped."""

    ran: int = 0
    stopped: str = "the study holds its trials"
    failures_in_a_row: int = 0
    last_failure: str = ""


def work(prepared: Prepared, console: Console, deadline: float | None = None, progress: bool = False) -> WorkerOutcome:
    """Run trials until the study holds `settings.trials` of them (or `deadline`, a time.time(), passes)."""
    from optuna.storages import fail_stale_trials

    settings, study, trials = prepared.settings, prepared.study, prepared.trials
    if settings.jobs > 1:  # the machine's cores are shared by the workers
        import torch

        from transferkit.data.loading import available_cores

        torch.set_num_threads(max(1, available_cores() // settings.jobs))
    outcome = WorkerOutcome()
    bar = Progress(console, enabled=progress)
    with shared_caches(settings.cache or trials.folder.cache), bar.task("tune: trials", settings.trials) as task:
        task.advance(_finished(study))
        while True:
            if deadline is not None and time.time() >= deadline:
                outcome.stopped = f"--timeout {settings.timeout} passed"
                break
            before = _finished(study)
            with Turn(prepared.storage.lock) as turn:
                fail_stale_trials(study)  # a database storage's heartbeat: trials of dead processes, any machine
                fail_orphans(study, lambda trial: _mark_orphan(trials.folder, trial, console))
                if held(study) >= settings.trials:
                    break
                failed: list[str] = []

                def objective(trial) -> float:
                    trial.set_user_attr("worker", this_worker())  # who runs it: the orphan check reads it
                    turn.release()  # the trial is in the storage now: the next process may count and start one
                    try:
                        return trials.run(trial, console)
                    except TrialFailed as exc:
                        failed.append(str(exc))
                        raise

                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            outcome.ran += 1
            outcome.failures_in_a_row = outcome.failures_in_a_row + 1 if failed else 0
            keep_best_checkpoints(study, trials.folder, settings.keep_best)
            task.advance(max(0, _finished(study) - before))
            if failed and outcome.failures_in_a_row >= FAILURES_IN_A_ROW:
                raise TransferkitError(f"{FAILURES_IN_A_ROW} trials in a row failed; the last: {failed[0]}; fix the "
                                       f"recipe (or its tune.space), then run the same command to continue")
    return outcome


def _worker_process(settings: TuneSettings, deadline: float | None) -> None:
    """A `--jobs` worker: its own process on the same study; exit code 0, 2 (a user error) or 130 (Ctrl-C)."""
    import sys

    console = Console(stderr=True, soft_wrap=True)
    try:
        work(prepare(settings), console, deadline)
    except (TrialInterrupted, KeyboardInterrupt):
        sys.exit(130)
    except TransferkitError as exc:
        console.print(f"error: {' '.join(str(exc).split())}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


@dataclass
class TuneOutcome:
    """What one `transferkit tune` did: the prepared study, and how each of its processes ended."""

    prepared: Prepared
    outcome: WorkerOutcome
    worker_codes: list[int]
    seconds: float


def tune(settings: TuneSettings, console: Console | None = None, progress: bool = True) -> TuneOutcome:
    """Run the study to `settings.trials` trials in this process and `settings.jobs - 1` more; TrialInterrupted
    on Ctrl-C (after every process stopped). The report is tune/report.py's."""
    console = console or Console(stderr=True, soft_wrap=True)
    if settings.jobs < 1:
        raise TransferkitError(f"--jobs {settings.jobs}: give the number of processes, 1 or more")
    started = time.time()
    limit = timeout_seconds(settings.timeout)
    deadline = started + limit if limit is not None else None
    prepared = prepare(settings)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch threads
    workers = [context.Process(target=_worker_process, args=(settings, deadline), daemon=False)
               for _ in range(settings.jobs - 1)]
    for worker in workers:
        worker.start()
    try:
        outcome = work(prepared, console, deadline, progress)
    except KeyboardInterrupt:  # between trials (a trial itself stops at its next step: TrialInterrupted)
        raise TrialInterrupted() from None
    finally:
        for worker in workers:
            worker.join()
    codes = [worker.exitcode for worker in workers]
    if 130 in codes:
        raise TrialInterrupted()
    return TuneOutcome(prepared, outcome, codes, time.time() - started)


def timeout_seconds(text: str | None) -> float | None:
    """--timeout as seconds (None: no limit); TransferkitError naming the forms it takes."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise TransferkitError(f"--timeout {text}: {exc}") from None


