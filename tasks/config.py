"""Typed configuration of a benchmark, as written under ``benchmark:`` in a study YAML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from mmlo.tasks.base import Kind

#: The papers' image size for real datasets (mini-ImageNet's 84x84).
REAL_DATA_IMAGE_SIZE = 84

#: ``shots`` and ``query`` of a benchmark kind when a config leaves them out (method.md §5): 1 shot and 15
#: query images per class for image benchmarks (MMAML, KML), 5 support and 5 query points per task for
#: regression (MMAML-Regression). The fields' own defaults are the image ones.
TASK_SHAPE_DEFAULTS: dict[Kind, dict[str, int]] = {
    "classification": {"shots": 1, "query": 15},
    "regression": {"shots": 5, "query": 5},
}


class BenchmarkConfig(BaseModel):
    """Which multimodal task distribution to meta-learn, and the shape of its tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        "offline4",
        description=(
            "Registered benchmark: 'offline4' (built-in images: glyphs, emoji, icons, textures), "
            "'regression2' | 'regression3' | 'regression5' (MMAML's function families), or a real-data "
            "composition 'mm2' | 'mm2b' | 'mm3' | 'mm5' (needs 'root'). See `mmlo data list`."
        ),
    )
    modes: list[str] | None = Field(
        None,
        description="Subset of the benchmark's modes to use, in this order (default: all of them).",
    )
    ways: Annotated[int, Field(ge=2, le=100)] = Field(
        5, description="Classes per task (N-way); ignored by regression benchmarks."
    )
    shots: Annotated[int, Field(ge=1, le=1000)] = Field(
        TASK_SHAPE_DEFAULTS["classification"]["shots"],
        description=(
            "Support examples per class (K-shot); for regression, support points per task. Default by the "
            "benchmark's kind: 1 for image benchmarks, 5 for regression benchmarks (MMAML-Regression); the "
            "resolved spec records the number used."
        ),
    )
    query: Annotated[int, Field(ge=1, le=1000)] = Field(
        TASK_SHAPE_DEFAULTS["classification"]["query"],
        description=(
            "Query examples per class; for regression, query points per task. Default by the benchmark's "
            "kind: 15 for image benchmarks (the papers'), 5 for regression benchmarks (MMAML-Regression); "
            "the resolved spec records the number used."
        ),
    )
    image_size: Annotated[int, Field(ge=8, le=512)] = Field(
        32,
        description=(
            "Images are resized to image_size x image_size pixels (RGB). Default: 32 for the built-in "
            "benchmark, 84 (as in the papers) for real-data benchmarks."
        ),
    )
    max_classes: Annotated[int, Field(ge=2)] | None = Field(
        None,
        description=(
            "Cap on the classes per mode and split (a deterministic prefix of the class list), "
            "for small studies; default: every class."
        ),
    )
    samples_per_class: Annotated[int, Field(ge=2, le=1000)] = Field(
        20, description="Built-in image benchmark: rendered samples per class (Omniglot has 20)."
    )
    root: Path | None = Field(
        None, description="Folder holding the real datasets (real-data benchmarks only); '~' is expanded."
    )
    omniglot_split: Literal["vinyals", "maml"] = Field(
        "vinyals",
        description=(
            "Omniglot class split: 'vinyals' (1028/172/423 characters, the shipped list of Vinyals et al.) or "
            "'maml' (MAML's 1100/100/423 sizes; see tasks/omniglot_splits.json for how the list was derived)."
        ),
    )
    omniglot_rotations: bool = Field(
        True,
        description="Omniglot: the 90/180/270-degree rotations of each character are extra classes (x4), as customary.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where the built-in benchmark's rendered images are cached (default ~/.cache/mmlo).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_image_size(cls, data: Any) -> Any:
        # The default depends on the benchmark; writing it in keeps a dumped spec's meaning unchanged.
        if isinstance(data, dict) and data.get("image_size") is None:
            name = str(data.get("name", "offline4"))
            builtin = name == "offline4" or name.startswith("regression")
            data = {**data, "image_size": 32 if builtin else REAL_DATA_IMAGE_SIZE}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_task_shape(cls, data: Any) -> Any:
        # Image defaults would turn a regression task into 1 support and 15 query points, not MMAML's 5 + 5;
        # writing the kind's numbers in keeps a dumped spec's meaning unchanged if a default ever moves.
        if not isinstance(data, dict):
            return data
        missing = [key for key in ("shots", "query") if data.get(key) is None]
        if not missing:
            return data
        from mmlo.tasks.registry import benchmark_kind  # the registry imports this module

        try:
            kind = benchmark_kind(str(data.get("name", "offline4")))
        except ValueError:
            # An unregistered name is refused where the benchmark is built; until then, the field defaults.
            kind = "classification"
        return {**data, **{key: TASK_SHAPE_DEFAULTS[kind][key] for key in missing}}

    @field_validator("root", "cache_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()
