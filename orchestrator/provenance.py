"""``provenance.json``: what produced a run directory, so that its numbers can be trusted and reproduced.

It records the code (git commit and whether the working tree was dirty), the package versions, the
benchmark (name, modes, fingerprint: the class-index hash), the machine, every seed (training seeds, the
evaluation seed, the TPE sampler seed and its start-up trials), the concurrency each phase ran at (a
parallel search is only reproducible at the same concurrency, optuna#4412), and one entry per session
(a resumed study adds a session), with start and finish times and wall seconds.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mmlo.models.allocator import choose as choose_allocator
from mmlo.orchestrator.spec import Study
from mmlo.storage import PROVENANCE_FILE, RunStore

Run = RunStore | Path | str
PACKAGES = ("mmlo", "torch", "ray", "optuna", "polars", "pyarrow", "numpy", "pydantic", "altair", "typer", "pillow")


def now() -> str:
    """Local time with its UTC offset, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (default: mmlo's source); nulls outside git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def driver_peak_memory_mb() -> float:
    """Peak resident memory of this process (the study's driver)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_provenance(run_dir: Run) -> dict[str, Any]:
    """The run's provenance record ({} when there is none, or it cannot be read)."""
    try:
        data = RunStore.open(run_dir).read_json(PROVENANCE_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def start_session(
    run_dir: Run,
    study: Study,
    benchmark: dict[str, Any],
    *,
    resumed: bool,
    sampler: dict[str, Any] | None,
    address: str | None,
) -> dict[str, Any]:
    """Write provenance at the start of a session (a resumed study keeps its earlier sessions)."""
    record = read_provenance(run_dir) if resumed else {}
    sessions = list(record.get("sessions", []))
    sessions.append(
        {"started": now(), "finished": None, "wall_seconds": None, "resumed": resumed, "outcome": "running"}
    )
    record.update(
        {
            "study": study.name,
            "spec_fingerprint": study.fingerprint(),
            "git": git_state(),
            "packages": package_versions(),
            "benchmark": benchmark,
            "machine": machine(),
            "ray_address": address,
            "storage": RunStore.open(run_dir).where(),
            "trial_allocator": choose_allocator(benchmark["kind"])[1] if address is None else "the cluster's own",
            "seeds": {
                "training": list(study.seeds),
                "eval_seed": study.eval_seed,
                "search": sampler,
            },
            "started": record.get("started") or sessions[-1]["started"],
            "finished": None,
            "wall_seconds": None,
            "sessions": sessions,
        }
    )
    record.setdefault("concurrency", {})
    RunStore.open(run_dir).write_json(PROVENANCE_FILE, record)
    return record


def record_phase(run_dir: Run, phase: str, concurrent: int, reason: str, trials: int, wall_seconds: float) -> None:
    """How a phase ran in this session: trials at once (and why), trials run, wall seconds."""
    record = read_provenance(run_dir)
    record.setdefault("concurrency", {})[phase] = {"trials_at_once": concurrent, "why": reason}
    session = (record.get("sessions") or [{}])[-1]
    session.setdefault("phases", {})[phase] = {"trials": trials, "wall_seconds": round(wall_seconds, 3)}
    RunStore.open(run_dir).write_json(PROVENANCE_FILE, record)


def record_dashboard(run_dir: Run, url: str) -> None:
    """The Ray dashboard URL of this session (the report links it; it answers while the cluster runs)."""
    record = read_provenance(run_dir)
    record["dashboard_url"] = url
    RunStore.open(run_dir).write_json(PROVENANCE_FILE, record)


def finish_session(run_dir: Run, outcome: str, wall_seconds: float) -> dict[str, Any]:
    """Close the current session: ``outcome`` is completed | interrupted | failed."""
    record = read_provenance(run_dir)
    sessions = record.get("sessions") or [{}]
    sessions[-1].update({"finished": now(), "wall_seconds": round(wall_seconds, 3), "outcome": outcome})
    record["sessions"] = sessions
    record["driver_peak_memory_mb"] = round(max(driver_peak_memory_mb(), record.get("driver_peak_memory_mb") or 0), 1)
    if outcome == "completed":
        record["finished"] = sessions[-1]["finished"]
    record["wall_seconds"] = round(sum(s.get("wall_seconds") or 0.0 for s in sessions), 3)
    RunStore.open(run_dir).write_json(PROVENANCE_FILE, record)
    return record
