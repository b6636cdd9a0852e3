"""The paper studies run the papers' protocols: every resolved setting against the authors' code, by hand.

The tables below are written out from the authors' repositories, not from mmlo's defaults, so a default
that drifts (or a study file that is edited) fails here. Each value names the file it comes from:

- MMAML: github.com/shaohua0116/MMAML-Classification (README.md's training commands, main.py's argparse
  defaults, maml/models/conv_net.py and gated_conv_net.py, maml/metalearner.py);
- KML: github.com/sutd-visual-computing-group/KML-Classification (main.py's argparse defaults,
  scripts/models/conv_net.py and gated_conv_net.py, scripts/models/conv_embedding_model.py,
  scripts/trainer.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmlo.orchestrator.plan import ablation_trials
from mmlo.orchestrator.spec import Study, load_study

ROOT = Path(__file__).resolve().parents[2]

#: What both papers' code share.
BOTH: dict[str, Any] = {
    # benchmark
    "ways": 5,  # MMAML main.py / KML main.py: --num-classes-per-batch 5
    "shots": 1,  # both main.py: --num-samples-per-class 1
    "query": 15,  # both main.py: --num-val-samples 15
    "image_size": 84,  # both main.py: --common-img-side-len 84
    # backbone
    "channels": [32, 64, 128, 256],  # both main.py: --num-channels 32, doubled per layer in conv_net.py
    "downsample": "stride",  # both main.py: --use-max-pool false -> stride-2 convs (conv_net.py)
    "norm": "transductive",  # both conv_net.py: F.batch_norm(..., training=True) at meta-test too
    "init": "xavier",  # both conv_net.py / gated_conv_net.py: weight_init, xavier_uniform_ weights, zero biases
    # outer loop
    "lr": 0.001,  # MMAML main.py --slow-lr 0.001; KML main.py --lr 0.001
    "grad_clip": None,  # both main.py: --embedding-grad-clip 0.0 (no clipping), none on the backbone
    # task encoder: 4 stride-2 convs, average pool, linear to 128 hidden units averaged over the set
    "encoder": "conv",  # both conv_embedding_model.py (--conv-embedding true, --no-rnn-aggregation true)
    "embedding_dim": 128,  # both main.py: --embedding-hidden-size 128
}

#: MAML, Multi-MAML and MMAML as MMAML-Classification trains them.
MMAML_PROTOCOL: dict[str, Any] = {
    "iterations": 60000,  # README.md: --num-batches 600000 / main.py --meta-batch-size 10
    "lr_decay_every": None,  # maml/trainer.py: a constant learning rate
    "bn_affine": False,  # conv_net.py, gated_conv_net.py: self._bn_affine = False
    "pool": "mean",  # conv_net.py: "in maml network the conv maps are average pooled", then the classifier
    "inner_lr": 0.05,  # main.py: --fast-lr 0.05
    "inner_steps": 5,  # main.py: --num-updates 5
    "first_order": False,  # main.py: --first-order off
    # main.py: --inner-loop-grad-clip default 20.0, which the README's commands keep for MAML and MMAML alike;
    # maml/metalearner.py update_params clamps each gradient element to it
    "inner_grad_clamp": 20.0,
    "inner_grad_clip": None,
    "transductive": False,  # MAML has no prototypes
    "query_embedding": False,  # metalearner.py: the support set's embedding modulates both passes
}

#: ProtoNet, Multi-ProtoNet, MProtoNet and KML as KML-Classification trains them.
KML_PROTOCOL: dict[str, Any] = {
    "iterations": 30000,  # main.py: --num-batches 300000 / --meta-batch-size 10
    "lr_decay_every": 10000,  # trainer.py: lr *= 0.5 when i % 10000 == 0
    "lr_decay_factor": 0.5,  # trainer.py: lr *= 0.5
    "bn_affine": True,  # scripts/models/conv_net.py, gated_conv_net.py: self._bn_affine = True
    "pool": "flatten",  # conv_net.py / gated_conv_net.py: x.view(x.size(0), -1), no head
    "transductive": True,  # main.py: --transductive true (trainer.py _update_proto, for every model)
}

#: Arm name -> (learner, protocol, the arm's own settings).
ARMS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "MAML": ("maml", MMAML_PROTOCOL, {"resolved_modulation": "none"}),  # README.md: --maml-model True
    "Multi-MAML": ("multi_maml", MMAML_PROTOCOL, {"resolved_modulation": "none"}),  # README.md: Multi-MAML table
    # README.md: --mmaml-model True; main.py --condition-type affine: FiLM after BatchNorm
    "MMAML": ("mmaml", MMAML_PROTOCOL, {"resolved_modulation": "film"}),
    "ProtoNet": ("protonet", KML_PROTOCOL, {"resolved_modulation": "none", "query_embedding": False}),
    "Multi-ProtoNet": ("multi_protonet", KML_PROTOCOL, {"resolved_modulation": "none", "query_embedding": False}),
    # KML paper's MProtoNet: ProtoNet with MMAML's FiLM, in KML's trainer (trainer.py embeds each val task)
    "MProtoNet": ("mprotonet", KML_PROTOCOL, {"resolved_modulation": "film", "query_embedding": True}),
    "KML": (
        "kml",
        KML_PROTOCOL,
        {
            "resolved_modulation": "kml",
            "base_algorithm": "protonet",  # main.py: --kml-model True, ProtoNet trainer.py
            "kml_variant": "multiplicative",  # gated_conv_net.py: weight = weight * w_mod
            "kml_rank": 1,  # gated_conv_net.py: torch.ger(v_mod, u_mod), one outer product
            "kml_init": "authors",  # conv_embedding_model.py: plain torch.nn.Linear heads, default init
            "query_embedding": True,  # trainer.py: embeddings = self._embedding_model(task) for val tasks
        },
    ),
}

#: Benchmark, modes and the meta-batch of each paper study.
STUDIES = {
    # README.md "2 Modes (Omniglot and Mini-ImageNet)"; main.py --meta-batch-size 10
    "paper_mm2": ("mm2", 10),
    # README.md "3 Modes (Omniglot, Mini-ImageNet, and FC100)"; the papers' 10 tasks cannot be drawn in equal
    # shares of 3 modes, so 9 (mmlo draws every meta-batch in equal shares per mode)
    "paper_mm3": ("mm3", 9),
    # README.md "5 Modes (Omniglot, Mini-ImageNet, FC100, Aircraft, and CUB)"; --meta-batch-size 10
    "paper_mm5": ("mm5", 10),
}


def _resolved(study: Study, arm_name: str) -> dict[str, Any]:
    """Every setting one arm trains with, from the study file alone."""
    arm = study.arm(arm_name)
    learner = study.learner_config(arm)
    train = study.train_config(arm, study.seeds[0])
    values: dict[str, Any] = {**learner.model_dump(), **train.model_dump()}
    values.update(study.benchmark.model_dump())
    values["resolved_modulation"] = learner.resolved_modulation
    values["base_algorithm"] = learner.base_algorithm
    return values


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_paper_study_runs_the_authors_protocol(name: str) -> None:
    # every arm of the study resolves to the authors' setting for each entry of the tables above
    study = load_study(ROOT / "studies" / f"{name}.yaml")
    benchmark, meta_batch = STUDIES[name]
    assert study.benchmark.name == benchmark
    assert [a.name for a in study.arms] == list(ARMS)
    for arm_name, (learner, protocol, own) in ARMS.items():
        values = _resolved(study, arm_name)
        expected = {"learner": learner, "meta_batch": meta_batch, **BOTH, **protocol, **own}
        wrong = {key: (values[key], want) for key, want in expected.items() if values[key] != want}
        assert not wrong, f"{name} arm {arm_name}: (study, authors) differ for {wrong}"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_each_family_trains_for_its_own_budget(name: str) -> None:
    # the trial plan gives the MAML family 60,000 iterations and the ProtoNet family 30,000
    study = load_study(ROOT / "studies" / f"{name}.yaml")
    budgets = {spec.arm: spec.iterations for spec in ablation_trials(study)}
    assert budgets == {arm: protocol["iterations"] for arm, (_, protocol, _) in ARMS.items()}
