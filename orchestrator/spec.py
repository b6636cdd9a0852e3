"""The study spec: a typed model of a study YAML (``mmlo study FILE``).

A study names a benchmark, a grid of learner *arms* x *seeds* (the ablation phase), an optional Optuna
search over learner and training hyper-parameters, an optional confirm phase, resources and an output
folder. Every field carries a description: they feed ``mmlo schema`` (JSON Schema for editors) and the
summary printed by ``mmlo validate``. Unknown keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator.errors import UserError
from mmlo.tasks.config import BenchmarkConfig

Scalar = bool | int | float | str
Phase = Literal["ablation", "search", "confirm"]

#: Training fields an arm, a search or the study's ``train`` block may set.
TRAIN_FIELDS = ("meta_batch", "lr", "lr_decay_every", "lr_decay_factor", "grad_clip")
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
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


TrainSettings = _subset(
    "TrainSettings", TrainConfig, TRAIN_FIELDS, optional=False, doc="Outer-loop optimiser settings."
)
TrainOverrides = _subset(
    "TrainOverrides", TrainConfig, TRAIN_FIELDS, optional=True, doc="Per-arm optimiser overrides."
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


class Arm(_ArmBase):  # type: ignore[misc, valid-type]
    """One row of the ablation table: a named learner configuration (unset keys come from ``model``)."""

    name: str = Field(..., min_length=1, max_length=60, description="Arm name shown in tables and charts.")
    train: TrainOverrides | None = Field(  # type: ignore[valid-type]
        None, description="Optimiser settings that differ from the study's 'train' block for this arm."
    )

    def learner_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"name", "train"})


class SearchParam(BaseModel):
    """One dimension of the Optuna search space."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"] = Field(..., description="float | int | categorical.")
    low: float | None = Field(None, description="Lower bound (float and int).")
    high: float | None = Field(None, description="Upper bound, inclusive (float and int).")
    log: bool = Field(False, description="Sample on a log scale (float and int; low must be > 0).")
    step: float | None = Field(None, description="Discretisation step (float and int, not with log).")
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
        return self

    def matches(self, values: dict[str, Any]) -> bool:
        """True when the condition holds for the values sampled so far."""
        for key, expected in (self.when or {}).items():
            allowed = expected if isinstance(expected, list) else [expected]
            if key not in values or values[key] not in allowed:
                return False
        return True


class Search(BaseModel):
    """The Optuna phase: TPE over a define-by-run space, through Ray Tune's OptunaSearch."""

    model_config = ConfigDict(extra="forbid")

    trials: Annotated[int, Field(ge=1, le=100_000)] = Field(..., description="Number of Optuna trials.")
    base: str | None = Field(
        None, description="Arm whose configuration each trial starts from (default: the first arm)."
    )
    sampler_seed: int = Field(0, description="Seed of the TPE sampler (recorded with the run).")
    seed: int | None = Field(None, description="Training seed of search trials (default: the first seed).")
    iterations: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Training iterations per search trial (default: budget.iterations)."
    )
    max_concurrent: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Concurrent search trials (default: resources.max_concurrent)."
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

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha", "none"] = Field("asha", description="asha | none.")
    grace_period: Annotated[int, Field(ge=1)] = Field(
        1, description="ASHA: validations a trial runs before it can be stopped."
    )
    reduction_factor: Annotated[float, Field(gt=1)] = Field(2.0, description="ASHA: halving rate.")


class Confirm(BaseModel):
    """Re-run the best search configurations with the study's seeds at the full budget."""

    model_config = ConfigDict(extra="forbid")

    top_k: Annotated[int, Field(ge=1)] = Field(1, description="How many of the best search trials to re-run.")


class Resources(BaseModel):
    """Ray resources per trial and concurrency."""

    model_config = ConfigDict(extra="forbid")

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


class Transference(BaseModel):
    """Task-level transference (KML paper §4) measured inside each trial."""

    model_config = ConfigDict(extra="forbid")

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


class Study(BaseModel):
    """A study: benchmark, arms x seeds, optional Optuna search, resources, output."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=80,
        description="Study name; the run directory is <output>/<name>.",
    )
    description: str = Field("", description="Free text shown in the report header.")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig, description="Task distribution.")
    model: LearnerDefaults = Field(  # type: ignore[valid-type]
        default_factory=LearnerDefaults, description="Learner settings shared by every arm."
    )
    train: TrainSettings = Field(  # type: ignore[valid-type]
        default_factory=TrainSettings, description="Outer-loop optimiser settings."
    )
    budget: Budget = Field(default_factory=Budget, description="Training and evaluation budget.")  # type: ignore[valid-type]
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
    output: Path = Field(
        Path("runs"),
        validate_default=True,
        description="Folder that holds run directories (relative paths: from the working directory)."
    )

    @field_validator("output")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _check(self) -> Study:
        names = [arm.name for arm in self.arms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"arms: duplicate arm names {duplicates}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicate seeds in {self.seeds}")
        for field, value in (("baseline", self.baseline), ("search.base", self.search and self.search.base)):
            if value is not None and value not in names:
                raise ValueError(f"{field}: '{value}' is not an arm; arms are {names}")
        if self.transference and self.transference.arms:
            unknown = [a for a in self.transference.arms if a not in names]
            if unknown:
                raise ValueError(f"transference.arms: unknown arms {unknown}; arms are {names}")
        for phase in self.resolved_phases:
            if phase == "ablation" and not self.arms:
                raise ValueError("phases: 'ablation' needs at least one arm under 'arms'")
            if phase in ("search", "confirm") and self.search is None:
                raise ValueError(f"phases: '{phase}' needs a 'search' block")
        if not self.resolved_phases:
            raise ValueError("the study has nothing to run: add 'arms' or a 'search' block")
        if self.budget.val_interval > self.budget.iterations:
            raise ValueError(
                f"budget.val_interval ({self.budget.val_interval}) exceeds budget.iterations "
                f"({self.budget.iterations}): the trial would never validate"
            )
        for i, arm in enumerate(self.arms):
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
        data = self.model_dump(mode="json", exclude={"output", "resources", "description"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class SpecError(UserError):
    """A study file that cannot be used; ``str()`` is the one message shown to the user."""

    def __init__(self, file: Path | str, message: str, key: str | None = None, line: int | None = None):
        self.file, self.key, self.line, self.message = str(file), key, line, message
        where = self.file + (f":{line}" if line else "")
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


def _first_message(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _key_lines(node: yaml.Node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map every key path of a composed YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
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


def _location(err: dict[str, Any]) -> tuple[str, ...]:
    """Key path of a pydantic error, without the union/validator tags pydantic inserts."""
    parts = []
    for p in err["loc"]:
        text = str(p)
        if text.startswith(("function-", "constrained-")) or text in ("int", "float", "str", "bool", "list[int]"):
            continue
        parts.append(text)
    return tuple(parts)


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; `mmlo schema` lists every key)"
    if err["type"] == "missing":
        return "required key is missing"
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def parse_study(data: Any, file: Path | str = "<study>", lines: dict[tuple[str, ...], int] | None = None) -> Study:
    """Validate an already-parsed YAML document; errors become a SpecError naming key and line."""
    if data is None:
        raise SpecError(file, "the file is empty; a study needs at least 'name' and 'arms' or 'search'")
    if not isinstance(data, dict):
        raise SpecError(file, f"a study is a YAML mapping of keys, not a {type(data).__name__}")
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


def load_studies(path: Path | str) -> list[Study]:
    """Read and validate a study file; a file may hold several studies as YAML documents (``---``).

    Several documents run one after another, e.g. the same arms on regression2, regression3 and
    regression5. Raises SpecError with one clear message.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SpecError(path, "no such file (give the path to a study YAML, e.g. studies/smoke.yaml)")
    if path.is_dir():
        raise SpecError(path, "is a folder, not a study YAML file")
    text = path.read_text(encoding="utf-8")
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(path, f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None) from None
    pairs = [(doc, node) for doc, node in zip(documents, nodes, strict=True) if doc is not None]
    if not pairs:
        return [parse_study(None, path.resolve())]
    studies = [parse_study(doc, path.resolve(), _key_lines(node)) for doc, node in pairs]
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
