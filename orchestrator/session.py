"""One session of one study: where the driver writes, what is left to run, and how it is shown."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlo.orchestrator.resume import resume_command
from mmlo.orchestrator.search import SearchSpace
from mmlo.orchestrator.spec import Study
from mmlo.storage import RunStore


@dataclass
class Run:
    """One session of one study: where it writes, what is left, and how it is shown."""

    study: Study
    study_file: Path
    run_dir: RunStore
    output: str
    address: str | None
    max_concurrent: int | None
    space: SearchSpace | None
    benchmark: Any
    expected: dict[str, float | None] = field(default_factory=dict)
    session: int = 1
    #: Why ``fits`` trials run at once (printed, and recorded per phase in provenance).
    fits_reason: str = ""
    #: Where this session's driver log is (on this machine, also for a run on an object store).
    logs: Path = Path()

    @property
    def higher_is_better(self) -> bool:
        return self.benchmark.kind == "classification"

    @property
    def metric(self) -> str:
        from mmlo.models.evaluation import metric_name

        return metric_name(self.benchmark.kind)

    def resume_command(self) -> str:
        return resume_command(self.study_file, self.output, self.address, self.max_concurrent)
