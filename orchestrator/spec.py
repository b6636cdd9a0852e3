"""The study spec: a typed model of a study YAML (``mmlo study FILE``).

A study names a benchmark, a grid of learner *arms* x *seeds* (the ablation phase), an optional Optuna
search over learner and training hyper-parameters, an optional confirm phase, resources and an output
folder. Every field carries a description: they feed ``mmlo schema`` (JSON Schema for editors) and the
summary printed by ``mmlo validate``. Unknown keys are errors, so a typo never passes silently.
A study file is passed between people: the loader bounds what any file can cost (size, values with
aliases expanded, nesting), and every number must be finite, so a hostile file gets one clear error.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import ErrorDetails

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator.errors import UserError
from mmlo.storage.conditions import condition_holds
from mmlo.tasks.config import BenchmarkConfig

if TYPE_CHECKING:
    from mmlo.models.transference import TransferenceSettings  # imports torch: only when measuring

Scalar = bool | int | float | str
Phase = Literal["ablation", "search", "confirm"]

#: Training fields an arm, a search or the study's ``train`` block may set.
TRAIN_FIELDS = ("meta_batch", "lr", "lr_decay_every", "lr_decay_factor", "grad_clip", "grad_clip_per_component")
#: Budget fields (how long and how thoroughly each trial trains and is evaluated).
BUDGET_FIELDS = ("iterations", "val_interval", "val_episodes", "eval_episodes", "checkpoint_every")


def _subset(name: str, source: type[BaseModel], names: tuple[str, ...], *, optional: bool, doc: str) -> Any:
    """A strict model with some of ``source``'s fields (same types, limits and descriptions).

    With ``optional`` every field defaults to None ("not set here"), which lets an arm override only the
    fields it names while the study's defaults fill in the rest.
    """
    fields: dict[str, Any] = {}
    for key in names:
        info = source.model_fields[key]
        annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        if optional:
            fields[key] = (annotation | None, Field(None, description=info.description))
        else:
            fields[key] = (annotation, Field(info.default, description=info.description))
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    return create_model(name, __config__=config, __doc__=doc, **fields)


#: What an arm's own ``train`` block may set: the optimiser settings and its own length, so that one study can
#: hold each paper's arms with their own schedule (KML's ProtoNet family: 30,000 iterations with the learning
#: rate halved every 10,000; MMAML's MAML family: 60,000 at a constant rate).
ARM_TRAIN_FIELDS = (*TRAIN_FIELDS, "iterations")

if TYPE_CHECKING:
    # mypy cannot see the fields of models that create_model builds at run time: it checks each subset as a
    # model with the fields of the one it is cut from (same names and types; the optional subsets' may be None).
    class TrainSettings(TrainConfig): ...
    class TrainOverrides(TrainConfig): ...
    class Budget(TrainConfig): ...
    class LearnerDefaults(LearnerConfig): ...
    class _ArmBase(LearnerConfig): ...

else:
    TrainSettings = _subset(
        "TrainSettings", TrainConfig, TRAIN_FIELDS, optional=False, doc="Outer-loop optimiser settings."
    )
    TrainOverrides = _subset(
        "TrainOverrides",
        TrainConfig,
        ARM_TRAIN_FIELDS,
        optional=True,
        doc="Per-arm training schedule: optimiser settings and iterations that differ from the study's.",
    )
    Budget = _subset("Budget", TrainConfig, BUDGET_FIELDS, optional=False, doc="Training and evaluation budget.")
    LearnerDefaults = _subset(
        "LearnerDefaults",
        LearnerConfig,
        tuple(LearnerConfig.model_fields),
        optional=True,
        doc="Learner settings shared by every arm (an arm's own keys win).",
    )
    _ArmBase = _subset(
        "ArmBase", LearnerConfig, tuple(LearnerConfig.model_fields), optional=True, doc="One learner arm."
    )


class Arm(_ArmBase):
    """One row of the ablation table: a named learner configuration (unset keys come from ``model``)."""

    name: str = Field(..., min_length=1, max_length=60, description="Arm name shown in tables and charts.")
    train: TrainOverrides | None = Field(
        None,
        description=(
            "This arm's training schedule where it differs from the study's: optimiser settings (lr, "
            "lr_decay_every, lr_decay_factor, grad_clip, meta_batch) over the 'train' block, and 'iterations' "
            "over budget.iterations (e.g. the KML paper's ProtoNet arms: {iterations: 30000, lr_decay_every: "
            "10000} next to MMAML's 60,000-iteration MAML arms). The report shows every arm's budget."
        ),
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        # The name is printed in the validate summary and the report tables, one arm per line.
        if not v.isprintable():
            raise ValueError(f"arm name {v!r} holds tabs, line breaks or control characters; use plain text")
        return v

    def learner_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"name", "train"})


class SearchParam(BaseModel):
    """One dimension of the Optuna search space."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["float", "int", "categorical"] = Field(..., description="float | int | categorical.")
    low: float | None = Field(None, description="Lower bound (float and int).")
    high: float | None = Field(None, description="Upper bound, inclusive (float and int).")
    log: bool = Field(False, description="Sample on a log scale (float and int; low must be > 0).")
    step: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Discretisation step (float and int, not with log)."
    )
    choices: list[Scalar] | None = Field(None, description="The values of a categorical parameter.")
    when: dict[str, Scalar | list[Scalar]] | None = Field(
        None,
        description=(
            "Condition: sample this parameter only when every named, earlier-declared parameter has the "
            "given value (or one of the listed values); e.g. {modulation: kml}."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a categorical parameter takes 'choices', not low/high/log")
            # The trial config parses a text choice of a float field as a number, so "nan" would become NaN.
            for choice in self.choices:
                if isinstance(choice, str) and _spells_non_finite(choice):
                    raise ValueError(f"choice {choice!r} reads as a non-finite number; every choice must be finite")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("'step' cannot be combined with 'log'")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs integer low and high")
        if self.type == "int" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int parameter needs an integer step (got {self.step})")
        return self

    def matches(self, values: dict[str, Any]) -> bool:
        """True when the condition holds for the values sampled so far."""
        return condition_holds(self.when, values)


class Search(BaseModel):
    """The Optuna phase: TPE over a define-by-run space, through Ray Tune's OptunaSearch."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trials: Annotated[int, Field(ge=1, le=100_000)] = Field(..., description="Number of Optuna trials.")
    base: str | None = Field(
        None, description="Arm whose configuration each trial starts from (default: the first arm)."
    )
    sampler_seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="Seed of the TPE sampler, 0 to 2**32 - 1 (recorded with the run)."
    )
    seed: int | None = Field(None, description="Training seed of search trials (default: the first seed).")
    iterations: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description=(
            "Training iterations per search trial (default: the base arm's, i.e. its train.iterations or "
            "budget.iterations)."
        ),
    )
    max_concurrent: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Concurrent search trials (default: resources.max_concurrent)."
    )
    start_from_base: bool = Field(
        True,
        description=(
            "Run the base arm's own configuration as the first search trial (Optuna's enqueue_trial), so the "
            "search starts from what is known and its best trial can only match or beat the base at the "
            "search budget. Skipped, with a note, when a base value lies outside the space."
        ),
    )
    cost: Literal["seconds_per_iteration", "params_total"] | None = Field(
        None,
        description=(
            "Cost-aware search: Optuna's multi-objective TPE optimises the metric (accuracy up, MSE down) and "
            "minimises this cost "
            "(seconds_per_iteration: mean time of one outer step, noisy on a shared machine; params_total: "
            "trainable parameters, exact), and the report draws the Pareto front of the full-budget trials. "
            "Early stopping judges the metric alone, so a cheap, less accurate configuration may be stopped "
            "before it reaches the front: use scheduler type none for the complete front. Confirm still "
            "re-runs the trials with the best metric. Default: none (the metric alone)."
        ),
    )
    space: dict[str, SearchParam] = Field(
        ...,
        description=(
            "Parameters to search, sampled in this order. Keys are learner fields (inner_lr, inner_steps, "
            "learner, modulation, kml_variant, kml_rank, modulated_layers as a categorical of strings "
            "like '0-1-2-3' ...) or training fields (lr, lr_decay_every, lr_decay_factor, grad_clip, "
            "meta_batch)."
        ),
    )

    @model_validator(mode="after")
    def _check_space(self) -> Search:
        allowed = set(LearnerConfig.model_fields) | set(TRAIN_FIELDS)
        declared: list[str] = []
        for name, param in self.space.items():
            if name not in allowed:
                raise ValueError(
                    f"space.{name}: unknown parameter '{name}'; searchable: {', '.join(sorted(allowed))}"
                )
            for key in param.when or {}:
                if key not in self.space:
                    raise ValueError(f"space.{name}.when: condition names unknown parameter '{key}'")
                if key not in declared:
                    raise ValueError(
                        f"space.{name}.when: condition on '{key}', which must be declared before '{name}'"
                    )
            declared.append(name)
        if not self.space:
            raise ValueError("space: a search needs at least one parameter")
        return self


class Scheduler(BaseModel):
    """Early stopping of search trials (Tune's ASHA); ablation and confirm trials always run in full."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["asha", "none"] = Field("asha", description="asha | none.")
    grace_period: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description=(
            "ASHA: validations a search trial runs before it can first be stopped (its first rung). "
            "Default: half of a search trial's validations, rounded up, so that no trial is judged before "
            "it has trained half its budget: early curves at small budgets rank configurations poorly."
        ),
    )
    reduction_factor: Annotated[float, Field(gt=1)] = Field(
        2.0,
        description=(
            "ASHA: at each rung (grace_period, then grace_period x reduction_factor, ... validations, below "
            "the full budget) a trial continues only if its metric is in the best 1/reduction_factor of the "
            "trials that reached that rung before it; the first trial to reach a rung always continues. With "
            "the default grace period and 2 there is one rung, at half the budget, which keeps the better half."
        ),
    )


class Confirm(BaseModel):
    """Re-run the best search configurations with the study's seeds at the full budget."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    top_k: Annotated[int, Field(ge=1)] = Field(
        1,
        description=(
            "How many of the best full-budget search trials to re-run with every seed at the base arm's "
            "iterations (its train.iterations, else budget.iterations). "
            "A trial whose configuration is the base arm's own is passed over when the ablation phase runs "
            "that arm: its re-run would repeat the base arm's trials exactly."
        ),
    )


class Resources(BaseModel):
    """Ray resources per trial and concurrency."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cpus_per_trial: Annotated[float, Field(gt=0)] = Field(1.0, description="CPUs reserved per trial.")
    gpus_per_trial: Annotated[float, Field(ge=0)] = Field(
        0.0, description="GPUs per trial; fractions (e.g. 0.25) share a GPU between trials."
    )
    max_concurrent: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Upper bound on trials running at once (default: what the cluster fits)."
    )
    max_failures: Annotated[int, Field(ge=0)] = Field(
        0, description="Retries of a failed trial before it is recorded as failed."
    )
    memory_limit_mb: Annotated[int, Field(ge=128)] | None = Field(
        None,
        description=(
            "Cap on the memory each trial's worker process may allocate, in MiB (Linux RLIMIT_DATA: heap and "
            "private anonymous memory, address space that allocators reserve included, so well above resident "
            "memory: an idle trial worker with torch and Ray loaded holds about 1600). A trial that needs more "
            "fails as 'out of memory' and the study goes on, instead of the machine swapping or the kernel's OOM "
            "killer choosing a process. Default: no cap."
        ),
    )


class Transference(BaseModel):
    """Task-level transference (KML paper §4) measured inside each trial."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sources_per_mode: Annotated[int, Field(ge=1)] = Field(10, description="Source tasks per mode.")
    targets_per_mode: Annotated[int, Field(ge=1)] = Field(2, description="Target tasks per mode.")
    source_split: Literal["train", "val", "test"] = Field("train", description="Split of source tasks.")
    target_split: Literal["train", "val", "test"] = Field("test", description="Split of target tasks.")
    alpha: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Look-ahead SGD step size (default: the outer learning rate)."
    )
    neutral_band: Annotated[float, Field(ge=0)] = Field(
        0.01, description="|1 - LR| below this counts as neutral transfer."
    )
    at: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="Iterations at which to measure (default: the last iteration)."
    )
    arms: list[str] | None = Field(None, description="Arms to measure (default: every arm).")

    def settings(self) -> TransferenceSettings:
        """The block as the measurement takes it (everything but ``arms``, which chooses the trials)."""
        from mmlo.models.transference import TransferenceSettings

        return TransferenceSettings(**self.model_dump(exclude={"arms", "at"}), at=tuple(self.at) if self.at else None)


#: Keys that may change between sessions of one run: where it is written, how it is scheduled, its prose.
#: Everything else defines the results (the fingerprint, and what ``--resume`` refuses to change).
RESUMABLE_KEYS = ("output", "resources", "description")


class Study(BaseModel):
    """A study: benchmark, arms x seeds, optional Optuna search, resources, output."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=80,
        description="Study name; the run directory is <output>/<name>.",
    )
    description: str = Field("", description="Free text shown in the report header.")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig, description="Task distribution.")
    model: LearnerDefaults = Field(
        default_factory=LearnerDefaults, description="Learner settings shared by every arm."
    )
    train: TrainSettings = Field(
        default_factory=TrainSettings, description="Outer-loop optimiser settings."
    )
    budget: Budget = Field(default_factory=Budget, description="Training and evaluation budget.")
    arms: list[Arm] = Field(default_factory=list, description="Learner arms of the ablation grid.")
    baseline: str | None = Field(
        None, description="Arm that paired differences are measured against (default: the first arm)."
    )
    seeds: list[int] = Field([0], min_length=1, description="Training seeds; every arm runs each seed.")
    eval_seed: int = Field(
        1234, description="Seed of the fixed validation and test episodes shared by every arm."
    )
    phases: list[Phase] | None = Field(
        None,
        description="Phases to run, in order (default: ablation if arms, search if search, confirm if confirm).",
    )
    search: Search | None = Field(None, description="Optuna search phase.")
    scheduler: Scheduler = Field(default_factory=Scheduler, description="Early stopping of search trials.")
    confirm: Confirm | None = Field(None, description="Confirm phase: re-run the best search trials.")
    resources: Resources = Field(default_factory=Resources, description="Resources per trial.")
    transference: Transference | None = Field(None, description="Transference measurement (optional).")
    output: str = Field(
        "runs",
        validate_default=True,
        description=(
            "Where run directories go: a folder (relative paths: from the working directory; on a cluster, one "
            "that every node mounts at the same path) or an object-store URI that every node reaches, e.g. "
            "s3://bucket/prefix?endpoint_override=http://host:9000&region=us-east-1."
        ),
    )

    @field_validator("output", mode="before")
    @classmethod
    def _absolute(cls, v: Any) -> str:
        from mmlo.storage import normalise_location

        if not isinstance(v, (str, Path)) or not str(v).strip():
            raise ValueError("output: give a folder or a storage URI (s3://bucket/prefix)")
        return normalise_location(v)

    @model_validator(mode="before")
    @classmethod
    def _home_folders(cls, data: Any) -> Any:
        # Path.expanduser raises RuntimeError, which pydantic does not turn into a validation error, for
        # '~someone' when there is no such user: a study written on another machine would crash the loader.
        if not isinstance(data, dict):
            return data
        folders = [("output", data.get("output"))]
        if isinstance(data.get("benchmark"), dict):
            folders += [(f"benchmark.{key}", data["benchmark"].get(key)) for key in ("root", "cache_dir")]
        for key, value in folders:
            if isinstance(value, str) and value.startswith("~") and os.path.expanduser(value).startswith("~"):
                user = value.split("/", 1)[0]
                raise ValueError(f"{key}: cannot expand {user!r}: no such user here; write the folder's full path")
        return data

    @model_validator(mode="after")
    def _check(self) -> Study:
        names = [arm.name for arm in self.arms]
        duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"arms: duplicate arm names {duplicates}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicate seeds in {self.seeds}")
        for field, value in (("baseline", self.baseline), ("search.base", self.search and self.search.base)):
            if value is not None and value not in names:
                raise ValueError(f"{field}: '{value}' is not an arm; arms are {names}")
        if self.transference and self.transference.arms:
            known = set(names)
            unknown = [a for a in self.transference.arms if a not in known]
            if unknown:
                raise ValueError(f"transference.arms: unknown arms {unknown}; arms are {names}")
        for phase in self.resolved_phases:
            if phase == "ablation" and not self.arms:
                raise ValueError("phases: 'ablation' needs at least one arm under 'arms'")
            if phase in ("search", "confirm") and self.search is None:
                raise ValueError(f"phases: '{phase}' needs a 'search' block")
        if not self.resolved_phases:
            raise ValueError("the study has nothing to run: add 'arms' or a 'search' block")
        if self.search is not None and self.scheduler.type == "asha" and self.scheduler.grace_period is not None:
            base = self.search.base or (self.arms[0].name if self.arms else None)
            iterations = self.search.iterations or self.arm_iterations(
                next((a for a in self.arms if a.name == base), None)
            )
            validations = math.ceil(iterations / self.budget.val_interval)
            if self.scheduler.grace_period > validations:
                raise ValueError(
                    f"scheduler.grace_period: {self.scheduler.grace_period} validations, but a search trial "
                    f"validates {validations} times ({iterations} iterations, every {self.budget.val_interval}); "
                    "lower it or leave it unset (half the validations)"
                )
        if self.budget.val_interval > self.budget.iterations:
            raise ValueError(
                f"budget.val_interval ({self.budget.val_interval}) exceeds budget.iterations "
                f"({self.budget.iterations}): the trial would never validate"
            )
        for i, arm in enumerate(self.arms):
            own = arm.train.iterations if arm.train is not None else None
            if own is not None and self.budget.val_interval > own:
                raise ValueError(
                    f"arms.{i}.train.iterations: {own} iterations, fewer than budget.val_interval "
                    f"({self.budget.val_interval}): arm '{arm.name}' would never validate"
                )
            try:
                self.learner_config(arm)
            except ValidationError as err:
                raise ValueError(f"arms.{i}: {_first_message(err)} (arm '{arm.name}')") from None
            meta_batch = self.train_config(arm, self.seeds[0]).meta_batch
            if self.benchmark_mode_count and meta_batch % self.benchmark_mode_count:
                raise ValueError(
                    f"arms.{i}: meta_batch {meta_batch} of arm '{arm.name}' is not a multiple of the "
                    f"{self.benchmark_mode_count} modes (tasks are drawn in equal shares per mode)"
                )
        return self

    @property
    def benchmark_mode_count(self) -> int:
        """Number of modes in the study's benchmark (0 when the benchmark is not registered)."""
        if self.benchmark.modes:
            return len(self.benchmark.modes)
        try:
            from mmlo.tasks.registry import benchmark_modes
        except ImportError:
            return 0
        try:
            return len(benchmark_modes(self.benchmark.name))
        except KeyError:
            return 0

    @property
    def resolved_phases(self) -> list[Phase]:
        if self.phases is not None:
            return list(self.phases)
        phases: list[Phase] = []
        if self.arms:
            phases.append("ablation")
        if self.search is not None:
            phases.append("search")
        if self.confirm is not None:
            phases.append("confirm")
        return phases

    @property
    def baseline_arm(self) -> str | None:
        return self.baseline or (self.arms[0].name if self.arms else None)

    def learner_config(self, arm: Arm, overrides: dict[str, Any] | None = None) -> LearnerConfig:
        """The arm's full learner configuration: study defaults, then the arm's keys, then overrides."""
        fields = {**self.model.model_dump(exclude_none=True), **arm.learner_fields()}
        learner_overrides = {k: v for k, v in (overrides or {}).items() if k in LearnerConfig.model_fields}
        return LearnerConfig(**{**fields, **learner_overrides})

    def arm_iterations(self, arm: Arm | None) -> int:
        """The arm's training length: its own ``train.iterations``, else ``budget.iterations``."""
        own = arm.train.iterations if arm is not None and arm.train is not None else None
        return own if own is not None else self.budget.iterations

    def train_config(
        self, arm: Arm | None, seed: int, overrides: dict[str, Any] | None = None, iterations: int | None = None
    ) -> TrainConfig:
        """The full training configuration of one trial."""
        fields: dict[str, Any] = {**self.train.model_dump(), **self.budget.model_dump()}
        if arm is not None and arm.train is not None:
            fields.update(arm.train.model_dump(exclude_none=True))
        fields.update({k: v for k, v in (overrides or {}).items() if k in TRAIN_FIELDS})
        if iterations is not None:
            fields["iterations"] = iterations
        return TrainConfig(**fields, seed=seed, eval_seed=self.eval_seed)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def ablation_trials(self) -> int:
        return len(self.arms) * len(self.seeds) if "ablation" in self.resolved_phases else 0

    def trial_count(self) -> int:
        """Trials the study will run in all (confirm counts top_k x seeds)."""
        count = self.ablation_trials()
        if self.search is not None and "search" in self.resolved_phases:
            count += self.search.trials
        if self.confirm is not None and "confirm" in self.resolved_phases:
            count += self.confirm.top_k * len(self.seeds)
        return count

    def fingerprint(self) -> str:
        """Hash of everything that defines the study's results (not where they are written)."""
        data = self.model_dump(mode="json", exclude=set(RESUMABLE_KEYS))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class SpecError(UserError):
    """A study file that cannot be used; ``str()`` is the one message shown to the user."""

    def __init__(self, file: Path | str, message: str, key: str | None = None, line: int | None = None):
        self.file, self.key, self.line, self.message = str(file), key, line, message
        where = self.file + (f":{line}" if line else "")
        shown_key = _shown(key, MAX_SHOWN_KEY) + ": " if key else ""
        # Keys and values come from the file: escaped, a hostile one can neither split the one-line message
        # nor send escape sequences to the terminal.
        super().__init__(_shown(f"{where}: {shown_key}{message}"))


# Budgets of the loader. A study file is passed between people, so whatever it holds, `mmlo validate`
# must answer within a second or two and in bounded memory.

#: Largest study file read, in bytes: about a hundred times the biggest shipped study, and small enough
#: for the pure-Python YAML parser (which the budgets below hook into) to read in well under a second.
MAX_FILE_BYTES = 256 * 1024
#: Most values (scalars, lists and mappings) one file may hold, every alias counted at its expanded size:
#: a dozen lines of nested aliases ("billion laughs") would otherwise expand to billions of values.
MAX_VALUES = 50_000
#: Deepest nesting of lists and mappings, aliases expanded: a study needs a handful of levels, and deep
#: documents would exhaust Python's recursion in the YAML composer and in the validators.
MAX_DEPTH = 50
#: Longest integer literal: 64 bits need 20 digits (66 characters in binary), and Python refuses to convert
#: more than 4300 digits with a ValueError the constructor would let escape.
MAX_INT_CHARS = 100
#: Integers of a study fit a signed 64-bit integer: seeds, budgets and counts reach NumPy, torch and Ray.
INT_LIMIT = 2**63
#: Longest key path and echoed value shown in a message.
MAX_SHOWN_KEY, MAX_SHOWN_VALUE = 120, 80

#: Characters refused in any text value: C0/C1 controls other than tab and line feed, and bidirectional-text
#: controls, which could rewrite the terminal that prints a summary or disguise what a value says.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Python types the safe loader builds from YAML tags that no study field takes.
_FOREIGN: dict[type, str] = {bytes: "!!binary", set: "!!set", tuple: "!!omap/!!pairs"}
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _shown(text: str, limit: int | None = None) -> str:
    """``text`` fit for one terminal line: non-printable characters escaped, cut at ``limit`` characters."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _spells_non_finite(text: str) -> bool:
    """True when pydantic would read ``text`` as an infinite or NaN float ('inf', 'NaN', '1e999')."""
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _path_step(parent: yaml.Node | None, index: Any) -> str | None:
    """The key-path component of the node composed at ``index`` of ``parent`` (None for a key or the root)."""
    if isinstance(parent, yaml.SequenceNode):
        return str(index)
    if isinstance(parent, yaml.MappingNode) and index is not None:
        return str(index.value) if isinstance(index, yaml.ScalarNode) else "?"
    return None


class _Mark(Protocol):
    """Where a YAML event or node starts (PyYAML's and libyaml's marks alike)."""

    line: int


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader with budgets, so that no file can hang the loader or exhaust memory.

    The composer counts every alias at the size of what it stands for *before* anything expands it, and
    refuses a file past MAX_VALUES values or MAX_DEPTH levels, a recursive alias, or a duplicate key (YAML
    keeps the last silently). The constructor turns values that would raise a plain Python exception (a
    5000-digit integer, the date 2024-13-45) into a SpecError. Every error names the key path and line.
    """

    def __init__(self, text: str, file: Path | str) -> None:
        super().__init__(text)
        self.file = file
        self.values = 0  # values composed so far in the whole file, aliases at their expanded size
        self.depth = 0  # nesting of the node being composed
        self.reach = 0  # deepest nesting reached inside the node being composed, aliases expanded
        self.path: list[str] = []
        self.expanded: dict[str, tuple[int, int]] = {}  # anchor -> (values, levels) it stands for
        self.open: set[str] = set()  # anchors of the lists and mappings being composed
        self.where: dict[int, tuple[str, ...]] = {}  # id(node) -> key path, for constructor errors

    def refuse(self, mark: _Mark | None, message: str, path: list[str] | tuple[str, ...] | None = None) -> SpecError:
        key = ".".join(self.path if path is None else path)
        return SpecError(self.file, message, key or None, mark.line + 1 if mark is not None else None)

    def compose_document(self) -> yaml.Node | None:
        self.expanded.clear()  # anchors are local to a document; the value budget holds for the whole file
        node = super().compose_document()
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        step = _path_step(parent, index)
        if step is not None:
            self.path.append(step)
        self.depth += 1
        try:
            if isinstance(event, yaml.AliasEvent):
                self._count_alias(event)
                alias = super().compose_node(parent, index)
                return alias
            if self.depth > MAX_DEPTH:
                raise self.refuse(
                    event.start_mark,
                    f"nested more than {MAX_DEPTH} levels deep; a study needs a handful (a generated file?)",
                )
            anchor = event.anchor
            if anchor is not None and anchor in self.anchors:
                raise self.refuse(
                    event.start_mark,
                    f"anchor &{_shown(anchor, 40)} is defined twice (first on line "
                    f"{self.anchors[anchor].start_mark.line + 1}); rename one of them",
                )
            self._count(event.start_mark, 1)
            values_before, reach_before = self.values, self.reach
            self.reach = self.depth
            if anchor is not None:
                self.open.add(anchor)
            node = super().compose_node(parent, index)
            self.where[id(node)] = tuple(self.path)
            if anchor is not None:
                self.open.discard(anchor)
                self.expanded[anchor] = (self.values - values_before + 1, self.reach - self.depth + 1)
            self.reach = max(self.reach, reach_before)
            return node
        finally:
            self.depth -= 1
            if step is not None:
                self.path.pop()

    def _count(self, mark: _Mark | None, values: int, alias: str | None = None) -> None:
        self.values += values
        if self.values <= MAX_VALUES:
            return
        if alias is None:
            raise self.refuse(
                mark, f"the file holds more than {MAX_VALUES} values; a study needs a few hundred (the right file?)"
            )
        raise self.refuse(
            mark,
            f"alias *{_shown(alias, 40)} stands for {values} values and takes the file past {MAX_VALUES} "
            "(an alias bomb?); write the values out, or alias fewer times",
        )

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        anchor = event.anchor
        if anchor in self.open:
            raise self.refuse(
                event.start_mark,
                f"alias *{_shown(anchor, 40)} refers to a list or mapping that contains it; a study cannot be "
                "recursive: write the value out",
            )
        if anchor not in self.expanded:
            return  # an undefined alias: the composer reports it as a YAML error
        values, levels = self.expanded[anchor]
        if self.depth - 1 + levels > MAX_DEPTH:
            raise self.refuse(
                event.start_mark,
                f"alias *{_shown(anchor, 40)} nests the document more than {MAX_DEPTH} levels deep; "
                "a study needs a handful",
            )
        self.reach = max(self.reach, self.depth - 1 + levels)
        self._count(event.start_mark, values, anchor)

    # types-PyYAML types the anchor as a dict; PyYAML passes the event's anchor name (str | None).
    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue  # '<<: *defaults' keys are meant to be overridden by the mapping's own keys
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first:
                raise self.refuse(
                    key.start_mark,
                    f"duplicate key (also on line {first[(key.tag, key.value)]}); YAML would silently keep only "
                    "the last one: delete or rename one of them",
                    [*self.path, str(key.value)],
                )
            first[(key.tag, key.value)] = line
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        path = self.where.get(id(node), ())
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG and len(node.value) > MAX_INT_CHARS:
            raise self.refuse(
                node.start_mark, f"an integer of {len(node.value)} digits; study integers fit in 64 bits", path
            )
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as err:
            kind = node.tag.rsplit(":", 1)[-1]
            shown = _shown(str(node.value), MAX_SHOWN_VALUE)
            raise self.refuse(
                node.start_mark, f"cannot read {shown!r} as {kind} ({err}); quote it to keep it as text", path
            ) from None


def _read_text(path: Path) -> str:
    """The text of a study file: UTF-8 (with or without a byte-order mark), at most MAX_FILE_BYTES."""
    try:
        if not path.exists():
            raise SpecError(path, "no such file (give the path to a study YAML, e.g. studies/smoke.yaml)")
        if path.is_dir():
            raise SpecError(path, "is a folder, not a study YAML file")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)  # never more: the path may be a device such as /dev/zero
    except OSError as err:
        raise SpecError(path, f"cannot read the file ({err.strerror or err})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(
            path, f"is larger than {MAX_FILE_BYTES // 1024} KiB; a study is a few KiB of YAML (the right file?)"
        )
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpecError(path, "is UTF-16 text; save it as UTF-8 (in most editors: 'Save with Encoding')", line=1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise SpecError(
            path, f"is not UTF-8 text (byte {raw[err.start]:#04x} cannot be read); save it as UTF-8", line=line
        ) from None


def _check_values(
    value: Any, file: Path | str, lines: dict[tuple[str, ...], int], path: tuple[str, ...] = ()
) -> None:
    """Refuse, wherever they are, values that no study field can hold sensibly.

    One pass over the whole document, so every key (nested models, arm overrides, search bounds and
    choices) is covered by the same rule: numbers are finite, integers fit 64 bits, keys are printable
    and text holds no control characters; YAML tags such as !!binary or !!set have no place in a study.
    """

    def fail(message: str, where: tuple[str, ...] = path) -> NoReturn:
        raise SpecError(file, message, ".".join(where) or None, _line_for(lines, where))

    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not key.isprintable():
                fail("the key holds control or invisible characters; keys are plain names", (*path, key))
            if not isinstance(key, str):
                _check_values(key, file, lines, path)
            _check_values(item, file, lines, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, file, lines, (*path, str(i)))
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            shown = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
            fail(
                f"must be a finite number, not {shown} (numbers beyond ±1.8e308 read as infinite too); "
                "write a number such as 0.001"
            )
    elif isinstance(value, int):
        if not -INT_LIMIT <= value < INT_LIMIT:
            fail(f"integer {_shown(str(value), 30)} is out of range; study integers fit in 64 bits")
    elif isinstance(value, str):
        found = _CONTROL.search(value)
        if found:
            fail(f"text holds the control character U+{ord(found.group()):04X}; remove it")
    elif type(value) in _FOREIGN:
        fail(f"{_FOREIGN[type(value)]} values have no place in a study; write text, numbers, lists or mappings")


def _first_message(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map every key path of a composed YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?")
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, str(i))
            lines[path] = item.start_mark.line + 1
            lines.update(_key_lines(item, path))
    return lines


def _line_for(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _location(err: ErrorDetails) -> tuple[str, ...]:
    """Key path of a pydantic error, without the union/validator tags pydantic inserts."""
    parts = []
    for p in err["loc"]:
        text = str(p)
        if text.startswith(("function-", "constrained-")) or text in ("int", "float", "str", "bool", "list[int]"):
            continue
        parts.append(text)
    return tuple(parts)


def _message(err: ErrorDetails) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; `mmlo schema` lists every key)"
    if err["type"] == "missing":
        return "required key is missing"
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        msg += f" (got {_shown(repr(err['input']), MAX_SHOWN_VALUE)})"
    return msg


def parse_study(data: Any, file: Path | str = "<study>", lines: dict[tuple[str, ...], int] | None = None) -> Study:
    """Validate an already-parsed YAML document; errors become a SpecError naming key and line."""
    if data is None:
        raise SpecError(file, "the file is empty; a study needs at least 'name' and 'arms' or 'search'")
    if not isinstance(data, dict):
        raise SpecError(file, f"a study is a YAML mapping of keys, not a {type(data).__name__}")
    _check_values(data, file, lines or {})
    try:
        return Study.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = _location(first)
        msg = _message(first)
        # Model-level checks name their key path at the start of the message ("space.x: ...").
        if first["type"] == "value_error" and ": " in msg and " " not in msg.split(": ", 1)[0]:
            head, msg = msg.split(": ", 1)
            loc = (*loc, *head.split("."))
        line = _line_for(lines or {}, loc)
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        raise SpecError(file, msg + more, ".".join(loc) or None, line) from None


def _documents(text: str, file: Path) -> list[tuple[Any, dict[tuple[str, ...], int]]]:
    """The YAML documents of a study file, each with the line of every key path; budgets enforced."""
    loader: _StudyLoader | None = None
    try:
        loader = _StudyLoader(text, file)
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        # Lines first: constructing a document resolves '<<' merge keys in place.
        lines = [_key_lines(node) for node in nodes]
        return [(loader.construct_document(node), node_lines) for node, node_lines in zip(nodes, lines, strict=True)]
    except yaml.reader.ReaderError as err:
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise SpecError(
            file,
            f"character U+{code:04X} is not allowed in YAML (a binary file, or text in another encoding?); "
            "save the study as UTF-8 text",
            line=text.count("\n", 0, err.position) + 1,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(file, f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_studies(path: Path | str) -> list[Study]:
    """Read and validate a study file; a file may hold several studies as YAML documents (``---``).

    Several documents run one after another, e.g. the same arms on regression2, regression3 and
    regression5. Raises SpecError with one clear message, whatever the file holds: budgets on size,
    values, nesting and aliases keep a hostile file from hanging the loader or exhausting memory.
    """
    path = Path(path).expanduser()
    pairs = [(doc, lines) for doc, lines in _documents(_read_text(path), path) if doc is not None]
    if not pairs:
        return [parse_study(None, path.resolve())]
    studies = [parse_study(doc, path.resolve(), lines) for doc, lines in pairs]
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise SpecError(path, f"the documents of one file need distinct study names, got {names}", "name")
    return studies


def load_study(path: Path | str) -> Study:
    """Read a study file that holds exactly one study."""
    studies = load_studies(path)
    if len(studies) > 1:
        raise SpecError(path, f"holds {len(studies)} studies; expected one here")
    return studies[0]


def dump_study(study: Study) -> str:
    """The resolved spec as YAML (what the run directory records)."""
    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    schema = Study.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mmlo study"
    return schema


def spec_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Key paths whose values differ between two resolved specs (ignoring :data:`RESUMABLE_KEYS`)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}.{i}")
        elif a != b:
            out.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")

    def results_defining(spec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if k not in RESUMABLE_KEYS}

    walk(results_defining(recorded), results_defining(current), "")
    return out
