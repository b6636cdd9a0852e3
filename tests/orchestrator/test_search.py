from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.plan import decode_value, encode_value
from mmlo.orchestrator.search import NUMBER_KEY, compile_space, journal_storage, reconcile_journal
from mmlo.orchestrator.spec import SpecError, parse_study
from mmlo.storage import RunStore

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE: dict[str, Any] = {
    "name": "s",
    "benchmark": {"name": "regression2"},
    "model": {"hidden": [8, 8, 8]},
    "train": {"meta_batch": 4},
    "budget": {"iterations": 4, "val_interval": 2},
    "arms": [{"name": "MMAML", "learner": "mmaml"}],
}


def study_with(space: dict[str, Any], **search: Any) -> Any:
    return parse_study({**BASE, "search": {"trials": 4, "space": space, **search}})


def sample(space: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    ot_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = ot_study.ask()
        constants = space(trial)
        out.append({**trial.params, **constants})
        ot_study.tell(trial, 0.0)
    return out


KML_SPACE = {
    "modulation": {"type": "categorical", "choices": ["film", "sigmoid", "kml"]},
    "kml_variant": {"type": "categorical", "choices": ["multiplicative", "residual"], "when": {"modulation": "kml"}},
    "kml_rank": {"type": "int", "low": 1, "high": 4, "when": {"modulation": "kml"}},
    "inner_lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
}


def test_conditional_parameters_appear_only_when_their_condition_holds() -> None:
    # kml_variant and kml_rank are sampled for modulation=kml, and never otherwise
    space = compile_space(study_with(KML_SPACE))
    draws = sample(space, 60)
    assert {d["modulation"] for d in draws} == {"film", "sigmoid", "kml"}
    for d in draws:
        conditional = {"kml_variant", "kml_rank"} & set(d)
        assert conditional == ({"kml_variant", "kml_rank"} if d["modulation"] == "kml" else set())
        assert "inner_lr" in d


def test_condition_with_a_list_of_values() -> None:
    # `when: {modulation: [film, kml]}` holds for either listed value
    space_def = {
        "modulation": {"type": "categorical", "choices": ["film", "sigmoid", "kml"]},
        "modulated_layers": {"type": "categorical", "choices": ["0-1-2", "2"], "when": {"modulation": ["film", "kml"]}},
    }
    for d in sample(compile_space(study_with(space_def)), 40):
        assert ("modulated_layers" in d) == (d["modulation"] in ("film", "kml"))


def test_log_scale_spreads_samples_over_decades() -> None:
    # a log-uniform draw on [1e-4, 1] puts about a quarter of its samples in each decade
    space = compile_space(study_with({"inner_lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}))
    values = [d["inner_lr"] for d in sample(space, 400)]
    assert all(1e-4 <= v <= 1.0 for v in values)
    below_1e3 = sum(v < 1e-3 for v in values) / len(values)
    assert 0.17 < below_1e3 < 0.33  # a uniform draw would put 0.09 % there
    distribution = optuna.create_study().ask()
    space(distribution)
    assert distribution.distributions["inner_lr"].log


def test_int_step_and_float_step() -> None:
    # int params honour step; float params with step stay on the grid low + k * step
    space = compile_space(
        study_with(
            {
                "inner_steps": {"type": "int", "low": 1, "high": 7, "step": 2},
                "lr": {"type": "float", "low": 0.001, "high": 0.003, "step": 0.001},
            }
        )
    )
    for d in sample(space, 30):
        assert d["inner_steps"] in (1, 3, 5, 7)
        assert min(abs(d["lr"] - g) for g in (0.001, 0.002, 0.003)) < 1e-12


def test_define_by_run_returns_the_optuna_trial_number() -> None:
    # the trainable names a search trial search-<number>, so the number travels in the config
    draws = sample(compile_space(study_with(KML_SPACE)), 3)
    assert [d[NUMBER_KEY] for d in draws] == [0, 1, 2]


def test_list_fields_are_strings_in_the_space() -> None:
    # '0-1-2-3' -> [0, 1, 2, 3] for list-valued learner fields; other values pass through
    assert decode_value("modulated_layers", "0-1-2-3") == [0, 1, 2, 3]
    assert decode_value("channels", "32-64") == [32, 64]
    assert decode_value("modulated_layers", 2) == [2]
    assert decode_value("inner_lr", 0.5) == 0.5
    assert encode_value([32, 64, 128, 256]) == "32-64-128-256" and encode_value(0.5) == 0.5


@pytest.mark.parametrize(
    ("space", "key", "fragment"),
    [
        # an oracle learner cannot be modulated: the combination is refused before any trial runs
        (
            {
                "learner": {"type": "categorical", "choices": ["mmaml", "multi_maml"]},
                "modulation": {"type": "categorical", "choices": ["film", "none"]},
            },
            "search.space",
            "learner=multi_maml, modulation=film",
        ),
        # a condition on a value the parameter never takes
        (
            {
                "modulation": {"type": "categorical", "choices": ["film", "sigmoid"]},
                "kml_rank": {"type": "int", "low": 1, "high": 2, "when": {"modulation": "kml"}},
            },
            "search.space.kml_rank.when",
            "can never hold",
        ),
        # inner_lr must be > 0: a float range reaching 0 is refused
        ({"inner_lr": {"type": "float", "low": 0.0, "high": 0.1}}, "search.space", "inner_lr"),
        # meta_batch must stay a multiple of the two modes
        ({"meta_batch": {"type": "int", "low": 2, "high": 3}}, "search.space.meta_batch", "multiple"),
        # modulated layer 5 does not exist in a three-layer network
        ({"modulated_layers": {"type": "categorical", "choices": ["0-1", "5"]}}, "search.space.modulated_layers", "5"),
        # a list-valued field with a malformed string
        ({"channels": {"type": "categorical", "choices": ["32-x"]}}, "search.space.channels", "'32-x'"),
    ],
)
def test_bad_spaces_are_user_errors(space: dict[str, Any], key: str, fragment: str) -> None:
    # every bad space is a SpecError (exit code 2) naming the key and the offending values
    with pytest.raises(SpecError) as info:
        compile_space(study_with(space), "study.yaml")
    assert isinstance(info.value, UserError)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert str(info.value).startswith("study.yaml")


def test_bad_space_exits_2_through_the_cli(tmp_path: Any) -> None:
    # `mmlo study` refuses a bad space with exit code 2 before starting Ray
    from typer.testing import CliRunner

    from mmlo.orchestrator.cli import app

    file = tmp_path / "bad.yaml"
    file.write_text(
        "name: bad\nbenchmark: {name: regression2}\narms: [{name: A, learner: mmaml}]\n"
        "search:\n  trials: 2\n  space:\n    learner: {type: categorical, choices: [multi_maml]}\n"
        "    modulation: {type: categorical, choices: [film]}\n"
    )
    result = CliRunner().invoke(app, ["study", str(file), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "multi_maml" in result.output and not (tmp_path / "runs").exists()


def test_reconcile_journal_closes_interrupted_trials(tmp_path: Any) -> None:
    # after a crash: recorded outcomes are told to Optuna, unknown RUNNING trials fail and are re-queued
    storage = journal_storage(RunStore.open(tmp_path))
    ot_study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trials = [ot_study.ask() for _ in range(4)]
    for t in trials:
        t.suggest_float("x", 0.0, 1.0)
    finished = {
        0: {"state": "completed", "val_metric": 0.7},
        1: {"state": "stopped_early", "val_metric": 0.2},
        2: {"state": "failed", "val_metric": None},
    }
    rerun = reconcile_journal(storage, "s", finished)
    states = {t.number: t.state for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert states == {
        0: optuna.trial.TrialState.COMPLETE,
        1: optuna.trial.TrialState.PRUNED,
        2: optuna.trial.TrialState.FAIL,
        3: optuna.trial.TrialState.FAIL,
    }
    assert rerun == [{"x": trials[3].params["x"]}]
    assert math.isclose(optuna.load_study(study_name="s", storage=storage).best_value, 0.7)
