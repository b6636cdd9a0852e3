from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.plan import decode_value, encode_value, search_trial
from mmlo.orchestrator.ray_engine import make_searcher, mark_told, optuna_study, pending_optuna_trial
from mmlo.orchestrator.search import (
    NUMBER_KEY,
    base_point,
    compile_space,
    grace_period,
    is_base_configuration,
    journal_storage,
    reconcile_journal,
    rung_iterations,
    start_point,
)
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
    drawn = distribution.distributions["inner_lr"]
    assert isinstance(drawn, optuna.distributions.FloatDistribution) and drawn.log


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
    finished: dict[int, dict[str, Any]] = {
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


BASE_SPACE = {
    "inner_lr": {"type": "float", "low": 0.005, "high": 0.5, "log": True},
    "modulation": {"type": "categorical", "choices": ["film", "sigmoid", "kml"]},
    "kml_rank": {"type": "int", "low": 1, "high": 4, "when": {"modulation": "kml"}},
}


def test_base_point_is_the_base_arms_own_configuration() -> None:
    # each parameter takes the base arm's value (the resolved modulation); conditions are judged on those values
    point, why = base_point(study_with(BASE_SPACE))
    assert point == {"inner_lr": 0.05, "modulation": "film"} and why == ""
    kml = parse_study({**BASE, "arms": [{"name": "KML", "learner": "kml", "base": "maml", "kml_rank": 2}],
                       "search": {"trials": 4, "space": {**BASE_SPACE, "modulation": {"type": "categorical",
                                                                                   "choices": ["kml"]}}}})
    assert base_point(kml)[0] == {"inner_lr": 0.05, "modulation": "kml", "kml_rank": 2}


def test_base_point_outside_the_space_is_refused_with_a_reason() -> None:
    # a base value outside the range, the choices or the step grid: no point, and the reason names it
    narrow = {**BASE_SPACE, "inner_lr": {"type": "float", "low": 0.1, "high": 0.5}}
    point, why = base_point(study_with(narrow))
    assert point is None and "inner_lr=0.05" in why
    point, why = base_point(study_with({"modulation": {"type": "categorical", "choices": ["sigmoid", "kml"]}}))
    assert point is None and "modulation=film" in why
    point, why = base_point(study_with({"inner_lr": {"type": "float", "low": 0.01, "high": 0.5, "step": 0.03}}))
    assert point is None and "step grid" in why
    assert base_point(study_with({"inner_lr": {"type": "float", "low": 0.02, "high": 0.5, "step": 0.03}}))[0]
    assert start_point(study_with(BASE_SPACE, start_from_base=False)) is None


def test_is_base_configuration_compares_what_trains() -> None:
    # the base's own values are the base configuration whatever the budget or seed; any other value is not
    s = study_with(BASE_SPACE)
    assert is_base_configuration(s, search_trial(s, 0, {"inner_lr": 0.05, "modulation": "film"}))
    assert not is_base_configuration(s, search_trial(s, 1, {"inner_lr": 0.06, "modulation": "film"}))
    assert not is_base_configuration(s, search_trial(s, 2, {"inner_lr": 0.05, "modulation": "sigmoid"}))


def test_fresh_search_asks_the_base_point_first_and_a_resumed_one_does_not(tmp_path: Any) -> None:
    # trial 0 of a new journal is the base arm's point; a searcher over a journal that has trials enqueues nothing
    s = study_with(BASE_SPACE)
    storage = journal_storage(RunStore.open(tmp_path))
    searcher = make_searcher(s, compile_space(s), storage, "val_metric", "min")
    first = searcher.suggest("t0")
    assert first is not None
    assert first[NUMBER_KEY] == 0 and first["inner_lr"] == 0.05 and first["modulation"] == "film"
    again = make_searcher(s, compile_space(s), storage, "val_metric", "min")
    ot_study = optuna.load_study(study_name=s.name, storage=storage)
    assert len(ot_study.trials) == 1
    second = again.suggest("t1")
    assert second is not None and second[NUMBER_KEY] == 1


def finish(searcher: Any, trial_id: str, result: dict[str, Any]) -> optuna.trial.FrozenTrial:
    searcher.suggest(trial_id)
    searcher.on_trial_complete(trial_id, result)
    return optuna_study(searcher).trials[-1]


def test_cost_aware_search_tells_optuna_both_objectives(tmp_path: Any) -> None:
    # with search.cost the study is multi-objective: metric and cost told together; short or cost-less trials are not
    s = study_with(BASE_SPACE, cost="params_total")
    searcher = make_searcher(s, compile_space(s), journal_storage(RunStore.open(tmp_path)), "val_metric", "min")
    assert searcher.metric == ["val_metric", "params_total"]
    assert optuna_study(searcher).directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    done = finish(searcher, "a", {"val_metric": 0.4, "params_total": 1200.0, "iteration": 4, "training_iteration": 2})
    assert done.state == optuna.trial.TrialState.COMPLETE and done.values == [0.4, 1200.0]
    short = finish(searcher, "b", {"val_metric": 0.3, "params_total": 900.0, "iteration": 2, "training_iteration": 1})
    assert short.state == optuna.trial.TrialState.PRUNED and short.intermediate_values == {}
    no_cost = finish(searcher, "c", {"val_metric": 0.3, "iteration": 4, "training_iteration": 2})
    assert no_cost.state == optuna.trial.TrialState.FAIL


def test_single_objective_search_keeps_its_metric_alone(tmp_path: Any) -> None:
    # without search.cost: one metric, one direction, early stops keep their intermediate value for TPE
    s = study_with(BASE_SPACE)
    searcher = make_searcher(s, compile_space(s), journal_storage(RunStore.open(tmp_path)), "val_metric", "max")
    assert searcher.metric == "val_metric"
    short = finish(searcher, "a", {"val_metric": 0.3, "iteration": 2, "training_iteration": 1})
    assert short.state == optuna.trial.TrialState.PRUNED and short.intermediate_values == {1: 0.3}


def test_optuna_search_private_state_is_where_mmlo_reads_it(tmp_path: Any) -> None:
    # OptunaSearch's study and its Tune -> Optuna trial map (private in Ray) are what the three accessors read:
    # a suggested trial is pending, told once it is marked, and unknown ids are not pending
    s = study_with(BASE_SPACE)
    searcher = make_searcher(s, compile_space(s), journal_storage(RunStore.open(tmp_path)), "val_metric", "min")
    assert isinstance(optuna_study(searcher), optuna.Study)
    config = searcher.suggest("t0")
    pending = pending_optuna_trial(searcher, "t0")
    assert config is not None and isinstance(pending, optuna.Trial) and pending.number == config[NUMBER_KEY]
    assert pending_optuna_trial(searcher, "never-suggested") is None
    mark_told(searcher, "t0")
    assert pending_optuna_trial(searcher, "t0") is None


@pytest.mark.parametrize(
    ("iterations", "val_interval", "grace", "factor"),
    [
        (200, 50, None, 2.0),
        (200, 50, 1, 2.0),
        (400, 25, None, 2.0),
        (400, 25, 2, 3.0),
        (90, 10, 1, 1.5),
        (10, 5, 2, 2.0),
    ],
)
def test_rung_iterations_are_rays_asha_rungs(
    iterations: int, val_interval: int, grace: int | None, factor: float
) -> None:
    # the rungs the report names are the ones Ray's ASHA bracket judges at, below the last validation
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from mmlo.orchestrator.ray_engine import search_scheduler

    s = parse_study({**BASE, "budget": {"iterations": iterations, "val_interval": val_interval},
                     "search": {"trials": 4, "space": {"inner_lr": BASE_SPACE["inner_lr"]}},
                     "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": factor}})
    scheduler = search_scheduler(s)
    assert isinstance(scheduler, AsyncHyperBandScheduler)
    last = math.ceil(iterations / val_interval)
    ray_rungs = sorted(math.ceil(m) for m, _ in scheduler._brackets[0]._rungs if math.ceil(m) < last)
    assert rung_iterations(s) == [min(r * val_interval, iterations) for r in ray_rungs]


def test_grace_period_beyond_a_search_trials_validations_is_a_spec_error() -> None:
    # Ray's ASHA would assert mid-study; the spec names the key and the count instead
    with pytest.raises(SpecError, match="scheduler.grace_period.*validates 2 times"):
        parse_study({**BASE, "search": {"trials": 2, "space": {"inner_lr": BASE_SPACE["inner_lr"]}},
                     "scheduler": {"grace_period": 3}})


def test_default_grace_period_is_half_the_search_budget() -> None:
    # unset, the first rung sits at half a search trial's validations (rounded up): one rung with factor 2
    s = study_with({"inner_lr": BASE_SPACE["inner_lr"]}, iterations=8)
    assert grace_period(s) == 2 and rung_iterations(s) == [4]
    odd = study_with({"inner_lr": BASE_SPACE["inner_lr"]}, iterations=6)
    assert grace_period(odd) == 2 and rung_iterations(odd) == [4]


def test_reconcile_journal_tells_both_objectives_of_a_cost_aware_search(tmp_path: Any) -> None:
    # a cost-aware search's recorded trial is told its metric and its cost; one without a recorded cost fails
    storage = journal_storage(RunStore.open(tmp_path))
    ot_study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    for _ in range(2):
        ot_study.ask().suggest_float("x", 0.0, 1.0)
    finished = {
        0: {"state": "completed", "val_metric": 0.7, "params_total": 5000},
        1: {"state": "completed", "val_metric": 0.6, "params_total": None},
    }
    assert reconcile_journal(storage, "s", finished, ("params_total",)) == []
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert trials[0].values == [0.7, 5000.0] and trials[1].state == optuna.trial.TrialState.FAIL
