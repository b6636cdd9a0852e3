"""studies/paper_regression.yaml runs exactly the MMAML authors' regression protocol.

The expected values are a hand-written table of the authors' settings, read from their code
(github.com/vuoristo/MMAML-Regression); each comment names the file a setting comes from. README.md there
holds the commands of every arm (2 modes: --dataset mixed, 3: many, 5: five).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmlo.orchestrator.spec import Study, load_studies

STUDIES = Path(__file__).parents[2] / "studies" / "paper_regression.yaml"

#: Every arm, every mode count (README.md commands; main.py defaults where a flag is not given).
COMMON = {
    "hidden": [100, 100, 100],  # README.md: --hidden-sizes 100 100 100
    "inner_lr": 0.001,  # README.md: --fast-lr 0.001
    "inner_steps": 5,  # README.md: --num-updates 5
    "first_order": False,  # main.py: --first-order not given
    "learn_inner_lr": False,  # maml/metalearner.py: a fixed scalar fast_lr
    "inner_grad_clip": None,  # maml/metalearner.py: only an element-wise clamp exists
}
TRAIN = {
    "lr": 0.001,  # main.py: --slow-lr default 0.001, Adam (torch.optim.Adam in main.py)
    "grad_clip": 2.0,  # main.py: --model-grad-clip and --embedding-grad-clip default 2.0
    "grad_clip_per_component": True,  # maml/metalearner.py step(): one clip_grad_norm_ per optimiser
    "iterations": 70000,  # README.md: --num-batches 70000
    "lr_decay_every": None,  # main.py: no scheduler
}
#: README.md: --meta-batch-size 50 (mixed), 75 (many), 125 (five).
META_BATCH = {2: 50, 3: 75, 5: 125}
#: MAML and Multi-MAML: --model-type fc / multi, --bias-transformation-size 20, no --inner-loop-grad-clip
#: (main.py default 0.0: maml/metalearner.py update_params() then leaves the gradient alone).
BASELINE = {"bias_transformation": 20, "inner_grad_clamp": None, "resolved_modulation": "none"}
#: MMAML: --model-type gated (maml/models/gated_net.py takes no bias transformation),
#: --inner-loop-grad-clip 10 (maml/metalearner.py: grad.clamp(-10, 10)), --embedding-type LSTM with
#: main.py's defaults --embedding-hidden-size 40, --embedding-num-layers 2
#: (maml/models/lstm_embedding_model.py: bidirectional, υ = both directions' final states, 80-d).
MMAML = {
    "bias_transformation": 0,
    "inner_grad_clamp": 10.0,
    "encoder": "lstm",
    "encoder_layers": 2,
    "encoder_hidden": 40,
    "embedding_dim": 80,
}
#: README.md: 2 modes give one generator head (--embedding-dims 200 for FiLM, 100 for sigmoid/softmax),
#: which gated_net.py's low2high order applies to layer1_linear only; 3 and 5 modes give three (all layers).
MODULATED = {2: [0], 3: None, 5: None}
#: README.md: --condition-type affine (main.py default) / sigmoid_gate / softmax.
MODULATION = {"MMAML (FiLM)": "film", "MMAML (sigmoid)": "sigmoid", "MMAML (softmax)": "softmax"}


def _studies() -> dict[int, Study]:
    return {int(s.benchmark.name.removeprefix("regression")): s for s in load_studies(STUDIES)}


@pytest.mark.parametrize("modes", [2, 3, 5])
def test_paper_regression_is_the_authors_protocol(modes: int) -> None:
    study = _studies()[modes]
    assert study.benchmark.name == f"regression{modes}"
    # maml/datasets/simple_functions.py: 10 points per function, the first 5 (--num-val-samples 5) the query.
    assert (study.benchmark.shots, study.benchmark.query) == (5, 5)
    arms = {arm.name: arm for arm in study.arms}
    assert set(arms) >= {"MAML", "Multi-MAML", *MODULATION}
    for name, arm in arms.items():
        learner = study.learner_config(arm)
        train = study.train_config(arm, seed=0)
        for key, setting in {**TRAIN, "meta_batch": META_BATCH[modes]}.items():
            assert getattr(train, key) == setting, (modes, name, key)
        expected = dict(COMMON)
        if name in ("MAML", "Multi-MAML"):
            expected.update(BASELINE)
            assert learner.learner == {"MAML": "maml", "Multi-MAML": "multi_maml"}[name]
        else:  # the MMAML arms, and KML-MAML (mmlo's own) configured like them
            expected.update(MMAML)
            if name in MODULATION:
                expected.update(resolved_modulation=MODULATION[name], modulated_layers=MODULATED[modes])
        for key, value in expected.items():
            assert getattr(learner, key) == value, (modes, name, key)
