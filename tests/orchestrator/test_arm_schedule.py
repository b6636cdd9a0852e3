"""Per-arm training schedules: one study holds each paper's arms with their own iterations and learning rate.

An arm's ``train`` block overrides the study's optimiser settings and ``budget.iterations`` for that arm
only; the trial plan, the search and confirm phases, and a bad override's error all follow from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmlo.orchestrator.plan import ablation_trials, confirm_trials, search_iterations, search_trial
from mmlo.orchestrator.spec import SpecError, Study, json_schema, load_studies, load_study

ROOT = Path(__file__).resolve().parents[2]

TWO_PROTOCOLS = """\
name: two
benchmark: {name: regression2, shots: 5, query: 5}
train: {meta_batch: 4, lr: 0.001}
budget: {iterations: 600, val_interval: 100}
arms:
  - {name: MAML, learner: maml}
  - {name: KML, learner: kml, base: maml, train: {iterations: 300, lr_decay_every: 100, lr_decay_factor: 0.5}}
seeds: [0, 1]
"""


def _load(tmp_path: Path, text: str) -> Study:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return load_study(path)


def _error(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        _load(tmp_path, text)
    return info.value


def test_arm_schedule_overrides_only_that_arm(tmp_path: Path) -> None:
    # KML trains 300 iterations with its rate halved every 100; MAML keeps the study's 600 at a constant rate
    study = _load(tmp_path, TWO_PROTOCOLS)
    maml, kml = study.arms
    assert study.arm_iterations(maml) == 600 and study.arm_iterations(kml) == 300
    a, b = study.train_config(maml, 0), study.train_config(kml, 1)
    assert (a.iterations, a.lr_decay_every, a.lr) == (600, None, 0.001)
    assert (b.iterations, b.lr_decay_every, b.lr_decay_factor, b.lr, b.seed) == (300, 100, 0.5, 0.001, 1)


def test_trial_plan_gives_each_arm_its_budget(tmp_path: Path) -> None:
    # the plan (and so the ETA, the trainable and the report's budget column) carries each arm's iterations
    study = _load(tmp_path, TWO_PROTOCOLS)
    plan = {spec.trial_id: spec.iterations for spec in ablation_trials(study)}
    assert plan == {"ablation-00-s0": 600, "ablation-00-s1": 600, "ablation-01-s0": 300, "ablation-01-s1": 300}
    assert all(spec.train_config(study).iterations == spec.iterations for spec in ablation_trials(study))


def test_search_and_confirm_follow_the_base_arms_budget(tmp_path: Path) -> None:
    # a search from KML trains KML's 300 iterations (unless search.iterations says otherwise); confirm too
    text = TWO_PROTOCOLS + (
        "search:\n  trials: 2\n  base: KML\n  space:\n    lr: {type: float, low: 0.001, high: 0.01}\n"
        "confirm: {top_k: 1}\n"
    )
    study = _load(tmp_path, text)
    assert search_iterations(study) == 300
    trial = search_trial(study, 0, {"lr": 0.002})
    assert trial.train_config(study).iterations == 300 and trial.train_config(study).lr_decay_every == 100
    assert {c.iterations for c in confirm_trials(study, [trial])} == {300}
    study = _load(tmp_path, text.replace("  base: KML\n", "  base: KML\n  iterations: 200\n"))
    assert search_iterations(study) == 200
    assert {c.iterations for c in confirm_trials(study, [search_trial(study, 0, {})])} == {300}


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("{iterations: 0}", "arms.1.train.iterations", "greater than or equal to 1"),
        ("{iterations: many}", "arms.1.train.iterations", "'many'"),
        ("{iteration: 300}", "arms.1.train.iteration", "unknown key"),
        ("{lr_decay_factor: 2}", "arms.1.train.lr_decay_factor", "less than or equal to 1"),
        ("{val_interval: 10}", "arms.1.train.val_interval", "unknown key"),
        ("{iterations: 50}", "arms.1.train.iterations", "fewer than budget.val_interval (100)"),
    ],
)
def test_bad_arm_override_names_its_key_and_line(tmp_path: Path, override: str, key: str, message: str) -> None:
    # a bad per-arm override is one SpecError naming the arm's YAML key path and line, never a traceback
    text = TWO_PROTOCOLS.replace(
        "train: {iterations: 300, lr_decay_every: 100, lr_decay_factor: 0.5}", f"train: {override}"
    )
    err = _error(tmp_path, text)
    assert err.key == key and err.line == 7 and message in str(err), str(err)


def test_schema_documents_the_arm_schedule() -> None:
    # `mmlo schema` describes the per-arm iterations override and which paper needs it
    overrides = json_schema()["$defs"]["TrainOverrides"]["properties"]
    assert set(overrides) >= {"iterations", "lr", "lr_decay_every", "lr_decay_factor"}
    arm_train = json_schema()["$defs"]["Arm"]["properties"]["train"]["description"]
    assert "iterations" in arm_train and "KML" in arm_train


def test_kml_init_is_documented_with_its_paper() -> None:
    # the KML head initialisation option says which code each choice follows
    description = json_schema()["$defs"]["Arm"]["properties"]["kml_init"]["description"]
    assert "identity" in description and "authors" in description and "KML-Classification" in description


def test_kml_sources_study_is_valid() -> None:
    # studies/kml_sources.yaml: two budgets of the same nine arms, paired against ProtoNet
    short, long = load_studies(ROOT / "studies" / "kml_sources.yaml")
    assert short.budget.iterations < long.budget.iterations
    assert [a.name for a in short.arms] == [a.name for a in long.arms]
    published = short.learner_config(short.arm("KML published"))
    assert (published.transductive, published.query_embedding, published.kml_init) == (True, True, "authors")
    assert short.baseline_arm == "ProtoNet"


def test_validate_summary_shows_an_arms_own_schedule(tmp_path: Path) -> None:
    # `mmlo validate` prints the arm's decay and iterations where they differ from the study's
    from mmlo.orchestrator.summary import summarize

    study = _load(tmp_path, TWO_PROTOCOLS)
    lines = {line.split()[0]: line for line in summarize(study, "x.yaml").splitlines() if line.startswith("    ")}
    assert lines["KML"].endswith("lr=0.001 (x0.5 every 100) iterations=300")
    assert lines["MAML"].endswith("lr=0.001")


def test_arms_set_their_own_architecture(tmp_path: Path) -> None:
    # architecture keys are learner settings, so an arm overrides the study's model block with its own
    text = TWO_PROTOCOLS.replace("benchmark: {name: regression2, shots: 5, query: 5}", "benchmark: {name: offline4}")
    text = text.replace(
        "{name: MAML, learner: maml}", "{name: MAML, learner: maml, downsample: stride, channels: [8, 8]}"
    )
    text += "model: {channels: [16, 16, 16, 16], downsample: maxpool}\n"
    study = _load(tmp_path, text)
    maml, kml = (study.learner_config(arm) for arm in study.arms)
    assert (maml.downsample, maml.channels) == ("stride", [8, 8])
    assert (kml.downsample, kml.channels) == ("maxpool", [16, 16, 16, 16])
