"""The trial plan: which trials a study runs, what each is called, and the configuration each one trains.

A trial is identified by a stable ``trial_id`` that is a pure function of the spec (``ablation-03-s1`` is
arm 3 with seed 1; ``search-007`` is Optuna trial 7; ``confirm-search-007-s1`` re-runs it with seed 1), so
that a resumed study recognises the trials it already finished. The driver uses the plan to decide what is
left to run; the trainable uses it to turn a trial into a :class:`LearnerConfig` and a :class:`TrainConfig`,
so both sides always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator.spec import Arm, Phase, Study

#: Learner fields whose values are integer lists; a search space writes them as strings like '0-1-2-3'.
LIST_FIELDS = frozenset(
    name for name, info in LearnerConfig.model_fields.items() if "list" in str(info.annotation)
)


def decode_value(name: str, value: Any) -> Any:
    """A searched value as the configuration field expects it: '0-1-2-3' -> [0, 1, 2, 3] for list fields."""
    if name in LIST_FIELDS and isinstance(value, str):
        return [int(part) for part in value.split("-") if part != ""]
    if name in LIST_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def encode_value(value: Any) -> Any:
    """A configuration value as one table cell: lists become '32-64-128-256', everything else is kept."""
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return value


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its id, phase, arm (the table row it belongs to), training seed, budget and overrides.

    ``overrides`` are searched values in their raw (search-space) form; ``base`` names the arm they are
    applied to (the search's base arm), or is None for an ablation trial, whose ``arm`` is the base.
    """

    trial_id: str
    phase: Phase
    arm: str
    seed: int
    iterations: int
    overrides: dict[str, Any] = field(default_factory=dict)
    base: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "phase": self.phase,
            "arm": self.arm,
            "seed": self.seed,
            "iterations": self.iterations,
            "overrides": dict(self.overrides),
            "base": self.base,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialSpec:
        return cls(
            trial_id=str(data["trial_id"]),
            phase=data["phase"],
            arm=str(data["arm"]),
            seed=int(data["seed"]),
            iterations=int(data["iterations"]),
            overrides=dict(data.get("overrides") or {}),
            base=data.get("base"),
        )

    def base_arm(self, study: Study) -> Arm:
        return base_arm(study, self.base if self.base is not None else self.arm)

    def decoded_overrides(self) -> dict[str, Any]:
        return {name: decode_value(name, value) for name, value in self.overrides.items()}

    def learner_config(self, study: Study) -> LearnerConfig:
        return study.learner_config(self.base_arm(study), self.decoded_overrides())

    def train_config(self, study: Study) -> TrainConfig:
        return study.train_config(self.base_arm(study), self.seed, self.decoded_overrides(), self.iterations)


def measures_transference(study: Study, spec: TrialSpec) -> bool:
    """Transference is measured in ablation trials of the arms the study's block names (default: all)."""
    t = study.transference
    return t is not None and spec.phase == "ablation" and (t.arms is None or spec.arm in t.arms)


def base_arm(study: Study, name: str | None) -> Arm:
    """The arm called ``name``; with no arms at all (a search-only study), an empty arm of study defaults."""
    if name is not None and any(a.name == name for a in study.arms):
        return study.arm(name)
    if name is None and study.arms:
        return study.arms[0]
    return Arm(name=name or "search")


def search_base(study: Study) -> str | None:
    """Name of the arm every search trial starts from (None: study defaults only)."""
    if study.search is None:
        return None
    return study.search.base or (study.arms[0].name if study.arms else None)


def search_iterations(study: Study) -> int:
    assert study.search is not None
    return study.search.iterations or study.arm_iterations(base_arm(study, search_base(study)))


def search_seed(study: Study) -> int:
    assert study.search is not None
    return study.search.seed if study.search.seed is not None else study.seeds[0]


def reports_per_trial(iterations: int, val_interval: int) -> int:
    """How many validations (Tune reports) a trial of ``iterations`` makes: every interval, and the last."""
    return math.ceil(iterations / val_interval)


def ablation_trials(study: Study) -> list[TrialSpec]:
    """Every arm x every seed at its full budget (its own train.iterations, else the study's), in order."""
    if "ablation" not in study.resolved_phases:
        return []
    return [
        TrialSpec(f"ablation-{i:02d}-s{seed}", "ablation", arm.name, seed, study.arm_iterations(arm))
        for i, arm in enumerate(study.arms)
        for seed in study.seeds
    ]


def search_trial(study: Study, number: int, params: dict[str, Any]) -> TrialSpec:
    """Optuna trial ``number`` with its sampled ``params``; its arm label is its own id."""
    trial_id = f"search-{number:03d}"
    return TrialSpec(
        trial_id, "search", trial_id, search_seed(study), search_iterations(study), dict(params), search_base(study)
    )


def confirm_trials(study: Study, best: list[TrialSpec]) -> list[TrialSpec]:
    """The best search trials (best first) re-run with every study seed at the base arm's full budget."""
    return [
        TrialSpec(
            f"confirm-{source.trial_id}-s{seed}",
            "confirm",
            source.trial_id,
            seed,
            study.arm_iterations(base_arm(study, source.base)),
            dict(source.overrides),
            source.base,
        )
        for source in best
        for seed in study.seeds
    ]
