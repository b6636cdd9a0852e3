"""The search phase's Optuna side: the space compiler, the Optuna journal, the sampler and ASHA's rungs.

``search.space`` in a study YAML becomes an Optuna define-by-run function: parameters are sampled in the
order they are declared, a parameter with a ``when`` condition is sampled only when the values sampled
before it satisfy the condition (``kml_rank`` exists only for ``modulation: kml``), ``log: true`` samples
on a log scale, and list-valued learner fields are categoricals of strings (``modulated_layers:
'0-1-2-3'``). Every combination the space can produce is checked against the learner and training
configuration before any trial starts, so a bad space is a user error (exit 2), not a failed trial.

Trials that ASHA stops are told to Optuna as PRUNED with their intermediate values, never as COMPLETE
with a truncated score (ray#6056): TPE ranks them apart from trials that used their full budget. Tune's
OptunaSearch and ASHA themselves are wired in :mod:`mmlo.orchestrator.ray_engine`.

The search starts from what is known: the base arm's own configuration is enqueued as its first trial, so
its best trial can only match or beat the base at the search budget. ASHA judges a trial only once it has
trained half its budget (the default grace period), and a cost-aware search (``search.cost``) hands
Optuna's multi-objective TPE the metric and a cost through OptunaSearch's list of metrics and modes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mmlo.orchestrator.plan import (
    TrialSpec,
    base_arm,
    decode_value,
    encode_value,
    reports_per_trial,
    search_base,
    search_iterations,
    search_seed,
)
from mmlo.orchestrator.spec import SearchParam, SpecError, Study
from mmlo.storage import JOURNAL_FILE, JOURNAL_SEGMENTS, RunStore
from mmlo.storage.conditions import allowed_values

if TYPE_CHECKING:
    import optuna

#: Config key under which the define-by-run function hands the Optuna trial number to the trainable.
NUMBER_KEY = "optuna_number"
#: Above this many combinations, the space is checked one parameter at a time instead of exhaustively.
MAX_CHECKED_COMBINATIONS = 4096


@dataclass(frozen=True)
class SearchSpace:
    """A compiled search space; calling it on an ``optuna.Trial`` samples one configuration (define-by-run)."""

    params: dict[str, SearchParam]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, param in self.params.items():
            if param.matches(values):
                values[name] = suggest(trial, name, param)
        return {NUMBER_KEY: trial.number}

    def sampled(self, config: dict[str, Any]) -> dict[str, Any]:
        """The searched values present in a trial's config (conditional ones only when they were sampled)."""
        return {name: config[name] for name in self.params if name in config}


def suggest(trial: optuna.Trial, name: str, param: SearchParam) -> Any:
    """Sample one parameter with the matching ``trial.suggest_*`` call."""
    if param.type == "categorical":
        return trial.suggest_categorical(name, list(param.choices or []))
    assert param.low is not None and param.high is not None
    if param.type == "int":
        step = int(param.step) if param.step else 1
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def _probes(param: SearchParam) -> list[Any]:
    """The values that stand for a parameter when checking the space: every choice, or both bounds."""
    if param.type == "categorical":
        return list(param.choices or [])
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return sorted({int(param.low), int(param.high)})
    return sorted({float(param.low), float(param.high)})


def _can_hold(param: SearchParam, value: Any) -> bool:
    if param.type == "categorical":
        return value in (param.choices or [])
    assert param.low is not None and param.high is not None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and param.low <= value <= param.high


def _assignments(params: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """Every combination of probe values the define-by-run function can produce, conditions honoured."""
    partial: list[dict[str, Any]] = [{}]
    for name, param in params.items():
        grown: list[dict[str, Any]] = []
        for values in partial:
            if param.matches(values):
                grown.extend({**values, name: v} for v in _probes(param))
            else:
                grown.append(values)
        partial = grown
        if len(partial) > MAX_CHECKED_COMBINATIONS:
            return _one_at_a_time(params)
    return partial


def _one_at_a_time(params: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """For huge spaces: each probe of each parameter, with the first probe of every other active parameter."""
    out: list[dict[str, Any]] = []
    for target, target_param in params.items():
        for probe in _probes(target_param):
            values: dict[str, Any] = {}
            for name, param in params.items():
                if param.matches(values):
                    values[name] = probe if name == target else _probes(param)[0]
            if values.get(target) == probe:
                out.append(values)
    return out


def compile_space(study: Study, file: Path | str = "<study>") -> SearchSpace:
    """Compile and check ``study.search.space``; a space that can produce an invalid trial raises SpecError."""
    if study.search is None:
        raise SpecError(file, "the study has no 'search' block", "search")
    params = dict(study.search.space)
    for name, param in params.items():
        for key, expected in (param.when or {}).items():
            if not any(_can_hold(params[key], value) for value in allowed_values(expected)):
                raise SpecError(
                    file,
                    f"condition {key}={expected} can never hold: '{key}' takes "
                    + (f"{params[key].choices}" if params[key].choices else f"[{params[key].low}, {params[key].high}]"),
                    f"search.space.{name}.when",
                )
    arm = base_arm(study, search_base(study))
    seed, iterations = search_seed(study), search_iterations(study)
    modes = study.benchmark_mode_count
    layers = _layer_count(study)
    for name, param in params.items():
        for value in param.choices or []:
            try:
                decode_value(name, value)
            except ValueError:
                raise SpecError(
                    file, f"{value!r} is not a list of integers written like '0-1-2-3'", f"search.space.{name}"
                ) from None
    for values in _assignments(params):
        decoded = {name: decode_value(name, value) for name, value in values.items()}
        where = ", ".join(f"{k}={v}" for k, v in values.items())
        try:
            learner = study.learner_config(arm, decoded)
            train = study.train_config(arm, seed, decoded, iterations)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise SpecError(
                file, f"the trial {where} is invalid: {loc + ': ' if loc else ''}{message}", "search.space"
            ) from None
        if modes and train.meta_batch % modes:
            raise SpecError(
                file, f"the trial {where} has meta_batch {train.meta_batch}, not a multiple of the {modes} modes",
                "search.space.meta_batch",
            )
        outside = [i for i in learner.modulated_layers or [] if not 0 <= i < layers]
        if layers and outside:
            raise SpecError(
                file,
                f"the trial {where} modulates layers {outside}, but the network has {layers} layers (0..{layers - 1})",
                "search.space.modulated_layers",
            )
    return SearchSpace(params)


#: Configuration fields that say how long and on which seed a trial trains, not what it trains.
_RUN_FIELDS = ("iterations", "seed", "eval_seed")


def _configuration(study: Study, overrides: dict[str, Any]) -> dict[str, Any]:
    """What the base arm with ``overrides`` trains, as comparable values: resolved modulation, lists as
    strings, budget and seed left out."""
    arm = base_arm(study, search_base(study))
    learner = study.learner_config(arm, overrides)
    train = study.train_config(arm, search_seed(study), overrides, search_iterations(study))
    values = {**learner.model_dump(), **train.model_dump()}
    values["modulation"] = learner.resolved_modulation
    values["base"] = learner.base_algorithm
    return {k: encode_value(v) for k, v in values.items() if k not in _RUN_FIELDS}


def base_point(study: Study) -> tuple[dict[str, Any] | None, str]:
    """The base arm's own configuration as a point of the search space, or None and the reason why not.

    Each parameter the define-by-run function would sample (conditions evaluated on the base's own values)
    takes the value the base arm trains with; the point is refused when such a value lies outside the
    space, or when the space cannot express the base's configuration.
    """
    assert study.search is not None
    own = _configuration(study, {})
    point: dict[str, Any] = {}
    for name, param in study.search.space.items():
        if not param.matches(point):
            continue
        value: Any = own.get(name)  # any type a learner or training setting takes, or None when unset
        if not _can_hold(param, value):
            return None, f"the base arm's {name}={value} lies outside the search space"
        if param.step is not None and param.low is not None and not _on_step(value, param.low, param.step):
            return None, f"the base arm's {name}={value} is not on the search's step grid ({param.step:g})"
        point[name] = value
    decoded = {name: decode_value(name, value) for name, value in point.items()}
    if _configuration(study, decoded) != own:
        return None, "the search space cannot express the base arm's configuration"
    return point, ""


def _on_step(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def is_base_configuration(study: Study, spec: TrialSpec) -> bool:
    """True when a search or confirm trial trains exactly the base arm's configuration."""
    return _configuration(study, spec.decoded_overrides()) == _configuration(study, {})


def start_point(study: Study) -> dict[str, Any] | None:
    """The point enqueued as the search's first trial: the base point, unless ``start_from_base`` is off."""
    assert study.search is not None
    return base_point(study)[0] if study.search.start_from_base else None


def _layer_count(study: Study) -> int:
    """Layers of the study's network (conv blocks for images, hidden layers for regression); 0 if unknown."""
    from mmlo.tasks.registry import benchmark_kind

    try:
        kind = benchmark_kind(study.benchmark.name)
    except ValueError:
        return 0
    defaults = study.learner_config(base_arm(study, search_base(study)))
    return len(defaults.hidden) if kind == "regression" else len(defaults.channels)


def journal_storage(store: RunStore) -> optuna.storages.BaseStorage:
    """The search's Optuna storage in the run directory.

    On a file system, Optuna's own journal file (``optuna-dashboard <run>/optuna.journal`` opens it). An
    object store cannot append or lock, so there each batch of Optuna's log entries is its own object
    (``optuna-journal/<n>.jsonl``, written whole before ``append_logs`` returns): a driver that crashes loses
    nothing Optuna was told, and the segments, concatenated in order, are that same journal file.
    """
    import optuna

    if store.local_path is not None:
        store.local_path.mkdir(parents=True, exist_ok=True)
        backend: Any = optuna.storages.journal.JournalFileBackend(store.path(JOURNAL_FILE))
    else:
        backend = _segment_backend(store)
    return optuna.storages.JournalStorage(backend)


def _segment_backend(store: RunStore) -> Any:
    from optuna.storages.journal import BaseJournalBackend

    class SegmentJournal(BaseJournalBackend):
        """Optuna's journal as numbered objects; one writer (the driver holding the run) appends."""

        def __init__(self) -> None:
            self.logs: list[dict[str, Any]] | None = None

        def _load(self) -> list[dict[str, Any]]:
            if self.logs is None:
                self.logs = []
                for rel in store.list(JOURNAL_SEGMENTS):
                    for line in (store.read_text(rel) or "").splitlines():
                        if line.strip():
                            self.logs.append(json.loads(line))
            return self.logs

        def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
            return self._load()[log_number_from:]

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            known = self._load()
            segment = len(store.list(JOURNAL_SEGMENTS))
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            store.write_text(f"{JOURNAL_SEGMENTS}/{segment:08d}.jsonl", text)
            known.extend(logs)

    return SegmentJournal()


def startup_trials(study: Study) -> int:
    """TPE's random start-up trials: half the budget, at most Optuna's default ten (with fewer, TPE keeps
    re-sampling the first categories it saw)."""
    assert study.search is not None
    return max(1, min(10, study.search.trials // 2))


def tpe_sampler(study: Study) -> optuna.samplers.TPESampler:
    """Seeded TPE; ``constant_liar`` keeps concurrent trials from being handed the same point."""
    import optuna

    assert study.search is not None
    return optuna.samplers.TPESampler(
        seed=study.search.sampler_seed, n_startup_trials=startup_trials(study), constant_liar=True
    )


def objectives(study: Study, metric: str, mode: str) -> tuple[list[str], list[str]]:
    """What Optuna optimises: result keys and their directions, the metric first, then the cost if any."""
    assert study.search is not None
    if study.search.cost is None:
        return [metric], [mode]
    return [metric, study.search.cost], [mode, "min"]


def has_trials(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    import optuna

    try:
        return bool(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        return False


def grace_period(study: Study) -> int:
    """Validations before ASHA may first stop a search trial: ``scheduler.grace_period``, by default half a
    search trial's validations (rounded up)."""
    if study.scheduler.grace_period is not None:
        return study.scheduler.grace_period
    return max(1, math.ceil(reports_per_trial(search_iterations(study), study.budget.val_interval) / 2))


def rung_iterations(study: Study) -> list[int]:
    """The iterations at which ASHA judges search trials (its rungs below the full budget), lowest first.

    Ray's ASHA puts its rungs at grace_period x reduction_factor**k validations up to the last one; a
    rung at or past the last validation judges a trial that has finished anyway.
    """
    if study.scheduler.type != "asha" or study.search is None:
        return []
    last = reports_per_trial(search_iterations(study), study.budget.val_interval)
    first, factor = grace_period(study), study.scheduler.reduction_factor
    count = int(math.log(last / first) / math.log(factor) + 1) if last >= first else 0
    reports = sorted({math.ceil(first * factor**k) for k in range(count)})
    return [min(r * study.budget.val_interval, search_iterations(study)) for r in reports if r < last]


def reconcile_journal(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    finished: dict[int, dict[str, Any]],
    costs: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """After a crash, close the Optuna trials the driver left RUNNING; return the params of those to re-run.

    ``finished`` maps Optuna trial numbers to the recorded outcome (``state``, ``val_metric`` and the
    ``costs`` columns of a cost-aware search) of search trials the run directory knows finished; such a
    trial is told that outcome. Any other RUNNING trial was interrupted: it is told FAIL and its params are
    returned, to be enqueued so the same point runs again.
    """
    import optuna

    try:
        ot_study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return []
    rerun: list[dict[str, Any]] = []
    for trial in ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        record = finished.get(trial.number)
        if record is None:
            ot_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            rerun.append(dict(trial.params))
        elif record["state"] == "completed" and all(record.get(k) is not None for k in ("val_metric", *costs)):
            values = [float(record[k]) for k in ("val_metric", *costs)]
            ot_study.tell(trial.number, values if costs else values[0])
        elif record["state"] == "stopped_early":
            ot_study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        else:
            ot_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return rerun


def enqueue(storage: optuna.storages.BaseStorage, study_name: str, params: list[dict[str, Any]]) -> None:
    """Queue interrupted points first, so the resumed search evaluates them before sampling new ones."""
    import optuna

    if not params:
        return
    ot_study = optuna.load_study(study_name=study_name, storage=storage)
    for point in params:
        ot_study.enqueue_trial(point, skip_if_exists=False)

