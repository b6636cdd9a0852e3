"""Typed configuration of a meta-learner and of its training run.

These are the knobs of the papers (method.md §2-§3, §6). The study spec composes them (an arm is a
``LearnerConfig``; the budget and optimiser become a ``TrainConfig``), and ``mmlo.models.training.fit``
consumes them, so a trial can be run without Ray.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LearnerName = Literal["maml", "multi_maml", "mmaml", "protonet", "multi_protonet", "mprotonet", "kml"]
ModulationName = Literal["none", "film", "sigmoid", "softmax", "kml"]

#: For each learner: (base algorithm, default modulation, one network per mode).
LEARNERS: dict[str, tuple[str, str, bool]] = {
    "maml": ("maml", "none", False),
    "multi_maml": ("maml", "none", True),
    "mmaml": ("maml", "film", False),
    "protonet": ("protonet", "none", False),
    "multi_protonet": ("protonet", "none", True),
    "mprotonet": ("protonet", "film", False),
    "kml": ("protonet", "kml", False),
}


class LearnerConfig(BaseModel):
    """One meta-learner: a base algorithm (MAML or ProtoNet), a modulation, and their hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learner: LearnerName = Field(
        "protonet",
        description=(
            "maml | multi_maml | mmaml | protonet | multi_protonet | mprotonet | kml. multi_* train one "
            "network per mode, routed by the true mode (oracle baselines); kml is Kernel ModuLation on "
            "the base learner named by 'base'."
        ),
    )
    base: Literal["protonet", "maml"] | None = Field(
        None, description="Base learner of 'kml' (default protonet); must be left unset for other learners."
    )
    modulation: ModulationName | None = Field(
        None,
        description=(
            "Task-aware modulation: none | film (x*(1+gamma)+beta) | sigmoid (x*sigmoid(tau)) | softmax "
            "(x*softmax(tau) over channels) | kml. Default: the learner's own (film for mmaml and "
            "mprotonet, kml for kml, none otherwise)."
        ),
    )
    kml_variant: Literal["multiplicative", "residual"] = Field(
        "multiplicative",
        description="KML: W*M (authors' code) or W*(1+M) (paper's equation).",
    )
    kml_rank: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="KML: rank of the kernel modulation (sum of this many outer products)."
    )
    modulated_layers: list[int] | None = Field(
        None, description="Indices (0-based) of the layers that are modulated; default: every layer."
    )
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        [32, 64, 128, 256],
        description="Conv backbone widths, one per block (KML/MMAML code: 32-64-128-256; MAML: 32 or 64 x4).",
    )
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        [100, 100, 100], description="Regression MLP hidden widths (MMAML: 3 x 100)."
    )
    bias_transformation: Annotated[int, Field(ge=0)] = Field(
        20, description="Regression MLP: size of the learned bias transformation on the input (0 = off)."
    )
    downsample: Literal["stride", "maxpool"] = Field(
        "maxpool", description="Conv blocks downsample with a stride-2 conv or a 2x2 max-pool."
    )
    pool: Literal["flatten", "mean"] = Field(
        "flatten",
        description=(
            "Conv backbone: flatten the last block's feature map for the head / embedding (MAML's and "
            "ProtoNet's code), or global-average-pool it first ('mean', the MMAML-Classification code)."
        ),
    )
    bn_affine: bool = Field(
        True,
        description=(
            "Conv backbone: BatchNorm with a learned per-channel scale and shift; false normalises only "
            "(the MMAML-Classification code's default, where FiLM supplies the affine)."
        ),
    )
    init: Literal["default", "xavier"] = Field(
        "default",
        description=(
            "Conv backbone initialisation: PyTorch's default U(+-1/sqrt(fan_in)), or xavier-uniform weights "
            "and zero biases, as the MMAML-Classification code initialises its image networks."
        ),
    )
    norm: Literal["transductive", "running", "none"] = Field(
        "transductive",
        description=(
            "BatchNorm mode: 'transductive' uses the current batch statistics at meta-test time too "
            "(MAML's reference code); 'running' uses running averages at evaluation; 'none' removes BN."
        ),
    )
    embedding_dim: Annotated[int, Field(ge=1)] = Field(
        128, description="Size of the task embedding produced by the task encoder."
    )
    encoder: Literal["conv", "mlp", "lstm"] | None = Field(
        None,
        description="Task encoder: conv (images), mlp (set encoder) or lstm (MMAML's BiLSTM) for regression.",
    )
    inner_lr: Annotated[float, Field(gt=0)] = Field(
        0.05, description="MAML inner-loop step size (MMAML images: 0.05; regression: 0.001)."
    )
    inner_steps: Annotated[int, Field(ge=0, le=100)] = Field(5, description="MAML inner-loop SGD steps.")
    first_order: bool = Field(False, description="MAML: drop second-order terms of the meta-gradient.")
    learn_inner_lr: bool = Field(False, description="MAML: learn one inner step size per parameter (Meta-SGD).")
    inner_grad_clip: Annotated[float, Field(gt=0)] | None = Field(
        None, description="MAML: clip each inner gradient to this norm (default: no clipping)."
    )
    transductive: bool = Field(
        False,
        description=(
            "ProtoNet: refine prototypes with query soft labels (the KML authors' code default); off by "
            "default, recorded either way."
        ),
    )
    query_embedding: bool = Field(
        False,
        description=(
            "Modulated ProtoNet (mprotonet, kml): modulate the query pass with υ recomputed from the query "
            "images, as the KML authors' code does; default off (υ from the support set for both passes)."
        ),
    )
    kml_init: Literal["identity", "authors"] = Field(
        "identity",
        description=(
            "KML: how the generator heads start. identity (mmlo): their biases make every task start at the "
            "unmodulated network (M = 1 multiplicative, M = 0 residual, Δb = 0). authors (KML paper's code, "
            "KML-Classification): plain linear heads at PyTorch's default initialisation, so every task starts "
            "at a small random modulation (M = g1 ⊗ g2 of two small random vectors)."
        ),
    )
    inner_grad_clamp: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description=(
            "MAML: clamp every element of each inner gradient to [-c, c] (default: no clamp). The MMAML "
            "authors' code does this for MMAML only, never for its MAML baselines (--inner-loop-grad-clip: "
            "10 in MMAML-Regression, 20 in MMAML-Classification); inner_grad_clip is the norm-rescaling "
            "alternative, and the two cannot both be set."
        ),
    )
    encoder_layers: Annotated[int, Field(ge=1, le=8)] | None = Field(
        None,
        description=(
            "Regression task encoder depth: stacked layers of the BiLSTM (MMAML-Regression code: 2, "
            "--embedding-num-layers) or ReLU layers of the mlp set encoder. Default: 1 (lstm), 2 (mlp)."
        ),
    )
    encoder_hidden: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description=(
            "Regression task encoder width: the BiLSTM's hidden units per direction (MMAML-Regression code: "
            "40, --embedding-hidden-size, so υ is 80-d: embedding_dim must be 2 x encoder_hidden) or the mlp "
            "set encoder's layer width. Default: embedding_dim / 2 (lstm), embedding_dim (mlp)."
        ),
    )

    @model_validator(mode="after")
    def _check_base(self) -> LearnerConfig:
        if self.base is not None and self.learner != "kml":
            raise ValueError(f"'base' only applies to learner 'kml', not '{self.learner}'")
        if self.learner == "kml" and self.modulation not in (None, "kml"):
            raise ValueError(f"learner 'kml' is kernel modulation; for '{self.modulation}' use mmaml/mprotonet")
        if self.modulation not in (None, "none") and self.learner in LEARNERS and LEARNERS[self.learner][2]:
            raise ValueError(f"oracle learner '{self.learner}' takes no modulation")
        if self.inner_grad_clip is not None and self.inner_grad_clamp is not None:
            raise ValueError("set inner_grad_clip (norm rescale) or inner_grad_clamp (element-wise), not both")
        if self.encoder == "lstm" and self.encoder_hidden is not None and self.embedding_dim != 2 * self.encoder_hidden:
            raise ValueError(
                f"the BiLSTM's υ is its two final states, 2 x encoder_hidden wide: with encoder_hidden "
                f"{self.encoder_hidden} set embedding_dim {2 * self.encoder_hidden}, not {self.embedding_dim}"
            )
        return self

    @property
    def base_algorithm(self) -> str:
        """'maml' or 'protonet'."""
        if self.learner == "kml":
            return self.base or "protonet"
        return LEARNERS[self.learner][0]

    @property
    def resolved_modulation(self) -> str:
        """The modulation actually applied."""
        if self.modulation is not None:
            return self.modulation
        return LEARNERS[self.learner][1]

    @property
    def per_mode(self) -> bool:
        """True for the oracle multi_* learners (one network per mode)."""
        return LEARNERS[self.learner][2]


class TrainConfig(BaseModel):
    """Outer loop and evaluation of one training run (one trial)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: Annotated[int, Field(ge=1)] = Field(1000, description="Meta-training iterations (outer steps).")
    meta_batch: Annotated[int, Field(ge=1)] = Field(
        10, description="Tasks per meta-batch, in equal shares of the modes (a multiple of the mode count)."
    )
    lr: Annotated[float, Field(gt=0)] = Field(1e-3, description="Adam learning rate of the outer loop.")
    lr_decay_every: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Multiply the outer learning rate by lr_decay_factor every this many iterations."
    )
    lr_decay_factor: Annotated[float, Field(gt=0, le=1)] = Field(0.5, description="Step-decay factor.")
    grad_clip: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Clip the global norm of the meta-gradient (default: no clipping)."
    )
    val_interval: Annotated[int, Field(ge=1)] = Field(
        100, description="Validate (and report) every this many iterations."
    )
    val_episodes: Annotated[int, Field(ge=1)] = Field(
        50, description="Fixed validation episodes per mode, drawn once from the 'val' split."
    )
    eval_episodes: Annotated[int, Field(ge=1)] = Field(
        600, description="Fixed test episodes per mode (the same for every arm), drawn from 'test'."
    )
    checkpoint_every: Annotated[int, Field(ge=1)] = Field(
        1, description="Checkpoint every this many validations."
    )
    seed: int = Field(0, description="Training seed: initialisation and meta-batch order.")
    eval_seed: int = Field(
        1234, description="Seed of the validation and test episodes (the study's, shared by all arms)."
    )
    grad_clip_per_component: bool = Field(
        False,
        description=(
            "With grad_clip: clip the meta-gradient norm of the backbone θ and, separately, that of the task "
            "encoder and modulation generator together, each to grad_clip, as the MMAML-Regression code does "
            "(--model-grad-clip 2, --embedding-grad-clip 2). Default: one global norm over every parameter."
        ),
    )

    @model_validator(mode="after")
    def _check_clip(self) -> TrainConfig:
        if self.grad_clip_per_component and self.grad_clip is None:
            raise ValueError("grad_clip_per_component needs grad_clip (the norm each component is clipped to)")
        return self
