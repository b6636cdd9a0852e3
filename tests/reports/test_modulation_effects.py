"""The front-door question in words: does each modulation beat its unmodulated base? And each arm's budget.

The numbers are derived by hand: paired differences of +0.1 and +0.2 alternating over 8 shared episodes
have mean 0.15 and sample standard deviation sqrt(8 * 0.05**2 / 7) = 0.0534522, so the 95 % half-width is
1.96 * 0.0534522 / sqrt(8) = 0.0370405; differences of +0.1 and -0.1 alternating have mean 0 and include it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mmlo.reports.html import build_sections
from mmlo.reports.rundir import load_run
from mmlo.reports.tables import (
    ModulationEffect,
    arm_budgets,
    effect_sentence,
    modulation_effects,
    unmodulated_bases,
)


def _trial(arm: str, learner: str, modulation: str, base: str, **cfg: Any) -> dict[str, Any]:
    row = {"phase": "ablation", "arm": arm, "seed": 0, "cfg_learner": learner, "cfg_modulation": modulation}
    row["cfg_base"] = base
    row["cfg_transductive"] = cfg.pop("transductive", False)
    row["cfg_iterations"] = cfg.pop("iterations", 600)
    row["cfg_lr"] = cfg.pop("lr", 0.001)
    row["cfg_lr_decay_every"] = cfg.pop("lr_decay_every", None)
    row["cfg_lr_decay_factor"] = cfg.pop("lr_decay_factor", 0.5)
    row["cfg_kml_init"] = cfg.pop("kml_init", "identity")
    return row


TRIALS = pl.DataFrame(
    [
        _trial("ProtoNet", "protonet", "none", "protonet"),
        _trial("ProtoNet +T", "protonet", "none", "protonet", transductive=True),
        _trial("Multi-ProtoNet", "multi_protonet", "none", "protonet", transductive=True),
        _trial("KML", "kml", "kml", "protonet"),
        _trial("KML +T", "kml", "kml", "protonet", transductive=True, kml_init="authors"),
        _trial("MAML", "maml", "none", "maml"),
        _trial("MMAML", "mmaml", "film", "maml"),
        _trial("KML-MAML", "kml", "kml", "maml"),
    ]
)
ARMS = tuple(TRIALS["arm"].to_list())


def test_each_modulated_arm_is_paired_with_the_closest_unmodulated_arm_of_its_base() -> None:
    # same base algorithm, no modulation, no oracle; the one sharing most settings (transductive) wins
    assert unmodulated_bases(TRIALS, arms=ARMS) == {
        "KML": "ProtoNet",
        "KML +T": "ProtoNet +T",
        "MMAML": "MAML",
        "KML-MAML": "MAML",
    }


def test_no_base_without_an_unmodulated_arm_or_recorded_settings() -> None:
    # a study whose only ProtoNet-family baseline is an oracle has no base for MProtoNet; old runs have no cfg_*
    trials = pl.DataFrame(
        [
            _trial("Multi-ProtoNet", "multi_protonet", "none", "protonet"),
            _trial("MProtoNet", "mprotonet", "film", "protonet"),
        ]
    )
    assert unmodulated_bases(trials, arms=("Multi-ProtoNet", "MProtoNet")) == {}
    bare = pl.DataFrame({"phase": ["ablation"], "arm": ["KML"], "seed": [0]})
    assert unmodulated_bases(bare, arms=("KML",)) == {}


def _episodes(values: dict[str, list[float]]) -> pl.DataFrame:
    rows = []
    for arm, series in values.items():
        for i, value in enumerate(series):
            mode = "a" if i < 4 else "b"
            rows.append(
                {
                    "arm": arm,
                    "seed": 0,
                    "mode": mode,
                    "episode": i % 4,
                    "episode_seed": 100 + i % 4,
                    "value_after": value,
                }
            )
    return pl.DataFrame(rows)


def test_paired_interval_excludes_zero_or_not() -> None:
    # KML: +0.1/+0.2 over ProtoNet -> better; MMAML: +0.1/-0.1 over MAML -> no difference shown
    base = [0.5, 0.4, 0.6, 0.5, 0.3, 0.7, 0.5, 0.4]
    up = [b + d for b, d in zip(base, [0.1, 0.2] * 4, strict=True)]
    wobble = [b + d for b, d in zip(base, [0.1, -0.1] * 4, strict=True)]
    episodes = _episodes({"ProtoNet": base, "KML": up, "MAML": base, "MMAML": wobble})
    trials = TRIALS.filter(pl.col("arm").is_in(["ProtoNet", "KML", "MAML", "MMAML"]))
    arms = ("ProtoNet", "KML", "MAML", "MMAML")
    kml, mmaml = modulation_effects(episodes, trials, arms=arms, higher_is_better=True)
    assert (kml.arm, kml.base, kml.n_paired, kml.verdict) == ("KML", "ProtoNet", 8, "better")
    assert kml.diff == pytest.approx(0.15) and kml.half == pytest.approx(0.0370405, rel=1e-5)
    assert (mmaml.base, mmaml.verdict) == ("MAML", "no difference shown")
    assert mmaml.diff == pytest.approx(0.0, abs=1e-12)
    # for MSE, lower is better: the same positive difference is worse
    (kml_mse, _) = modulation_effects(episodes, trials, arms=arms, higher_is_better=False)
    assert kml_mse.verdict == "worse"


def test_effect_sentences_say_it_in_words() -> None:
    better = ModulationEffect("KML", "ProtoNet", 0.15, 0.0370405, 8, "better")
    assert effect_sentence(better, "accuracy") == (
        "KML vs ProtoNet: +15.00 ± 3.70 accuracy points (paired 95 % CI over 8 shared test episodes); "
        "the interval excludes zero: KML is better than ProtoNet."
    )
    same = ModulationEffect("MMAML", "MAML", -0.01234, 0.5, 600, "no difference shown")
    assert effect_sentence(same, "mse") == (
        "MMAML vs MAML: -0.0123 ± 0.5000 MSE (paired 95 % CI over 600 shared test episodes); "
        "the interval includes zero: no difference from MAML is shown."
    )


def test_arm_budgets_in_words() -> None:
    # each arm's iterations, outer learning rate and step decay, as the report prints them under its name
    trials = pl.DataFrame(
        [
            _trial("MAML", "maml", "none", "maml", iterations=60000),
            _trial("ProtoNet", "protonet", "none", "protonet", iterations=30000, lr_decay_every=10000),
            _trial("KML", "kml", "kml", "protonet", iterations=300, lr=0.002, lr_decay_every=100, lr_decay_factor=0.1),
        ]
    )
    assert arm_budgets(trials, arms=("MAML", "ProtoNet", "KML")) == {
        "MAML": "60,000 iterations · lr 0.001",
        "ProtoNet": "30,000 iterations · lr 0.001, halved every 10,000",
        "KML": "300 iterations · lr 0.002, × 0.1 every 100",
    }


def test_report_first_section_states_each_modulation_in_words(synthetic_run: Path) -> None:
    # the ablation section (the report's first) opens with one sentence per modulated arm, then the table
    # with each arm's budget under its name
    run = load_run(synthetic_run)
    recorded = {
        "ProtoNet": ("protonet", "none", "protonet"),
        "MMAML (FiLM)": ("mmaml", "film", "maml"),
        "KML-ProtoNet": ("kml", "kml", "protonet"),
    }
    trials = run.trials.with_columns(
        cfg_learner=pl.col("arm").replace_strict({a: v[0] for a, v in recorded.items()}, default=None),
        cfg_modulation=pl.col("arm").replace_strict({a: v[1] for a, v in recorded.items()}, default=None),
        cfg_base=pl.col("arm").replace_strict({a: v[2] for a, v in recorded.items()}, default=None),
        cfg_iterations=pl.lit(100),
        cfg_lr=pl.lit(0.001),
    )
    first = build_sections(dataclasses.replace(run, trials=trials))[0]
    html = "".join(b for b in first.blocks if isinstance(b, str))
    assert first.anchor == "ablation"
    assert html.index("KML-ProtoNet vs ProtoNet: ") < html.index("<table>")
    assert "the interval " in html and "MMAML (FiLM) vs" not in html  # MMAML has no unmodulated MAML arm here
    assert "100 iterations · lr 0.001" in html
