"""Typed configuration of a benchmark, as written under ``benchmark:`` in a study YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The papers' image size for real datasets (mini-ImageNet's 84x84).
REAL_DATA_IMAGE_SIZE = 84


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
        1, description="Support examples per class (K-shot); for regression, support points per task."
    )
    query: Annotated[int, Field(ge=1, le=1000)] = Field(
        15, description="Query examples per class; for regression, query points per task."
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

    @field_validator("root", "cache_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()
