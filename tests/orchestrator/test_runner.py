from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mmlo.orchestrator import ledger
from mmlo.orchestrator.checkpoints import latest_checkpoints
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.plan import TrialSpec, ablation_trials, confirm_trials, search_trial
from mmlo.orchestrator.ranking import best_search_trials
from mmlo.orchestrator.ray_engine import announce_when_up, ray_dashboard_missing
from mmlo.orchestrator.runner import run_study
from mmlo.orchestrator.session import Run
from mmlo.orchestrator.spec import dump_study, parse_study, spec_changes
from mmlo.orchestrator.trial_events import finalize_record
from mmlo.storage import RunStore

SPEC: dict[str, Any] = {
    "name": "r",
    "benchmark": {"name": "regression2"},
    "budget": {"iterations": 10, "val_interval": 5},
    "arms": [{"name": "MAML", "learner": "maml"}, {"name": "MMAML", "learner": "mmaml"}],
    "seeds": [0, 1],
    "search": {"trials": 3, "base": "MMAML", "space": {"inner_lr": {"type": "float", "low": 0.001, "high": 0.1}}},
    "confirm": {"top_k": 2},
}


def study(**changes: Any) -> Any:
    return parse_study({**SPEC, **changes})


def test_trial_ids_are_stable_and_unique() -> None:
    # ids depend only on the spec: arm index and seed, Optuna number, source trial and seed
    s = study()
    assert [t.trial_id for t in ablation_trials(s)] == [
        "ablation-00-s0",
        "ablation-00-s1",
        "ablation-01-s0",
        "ablation-01-s1",
    ]
    found = search_trial(s, 7, {"inner_lr": 0.01})
    assert (found.trial_id, found.arm, found.base, found.iterations) == ("search-007", "search-007", "MMAML", 10)
    assert found.learner_config(s).learner == "mmaml" and found.learner_config(s).inner_lr == 0.01
    confirm = confirm_trials(s, [found])
    assert [t.trial_id for t in confirm] == ["confirm-search-007-s0", "confirm-search-007-s1"]
    assert TrialSpec.from_json(confirm[1].to_json()) == confirm[1]


def test_spec_changes_name_each_changed_key() -> None:
    # a changed budget and a changed arm are both named with old -> new; output/resources may change
    old = study().model_dump(mode="json")
    new = study(
        budget={"iterations": 20, "val_interval": 5},
        arms=[{"name": "MAML", "learner": "maml"}, {"name": "MMAML", "learner": "mmaml", "modulation": "sigmoid"}],
        resources={"cpus_per_trial": 2},
        output="/elsewhere",
    ).model_dump(mode="json")
    changes = spec_changes(old, new)
    assert "budget.iterations: 10 -> 20" in changes
    assert 'arms.1.modulation: null -> "sigmoid"' in changes
    assert not [c for c in changes if c.startswith(("resources", "output"))]


def test_resume_with_a_changed_spec_is_refused(tmp_path: Path) -> None:
    # --resume compares the recorded spec with the file's and refuses naming the difference (exit 2)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "spec.yaml").write_text(dump_study(study()))
    with pytest.raises(UserError, match=r"budget\.iterations: 10 -> 20"):
        run_study(study(budget={"iterations": 20, "val_interval": 5}), study_file="r.yaml", out=tmp_path, resume=True)


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path: Path) -> None:
    # starting over an existing run directory, or resuming a missing one, are user errors
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "spec.yaml").write_text(dump_study(study()))
    with pytest.raises(UserError, match="--resume"):
        run_study(study(), study_file="r.yaml", out=tmp_path)
    with pytest.raises(UserError, match="no run to resume"):
        run_study(study(), study_file="r.yaml", out=tmp_path / "nowhere", resume=True)


def write_result_lines(trial_dir: Path, rows: list[dict[str, Any]]) -> None:
    trial_dir.mkdir(parents=True)
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')


def test_latest_checkpoint_is_the_newest_confirmed_one(tmp_path: Path) -> None:
    # across sessions, the checkpoint of the highest iteration whose result line names it and that exists
    first = tmp_path / "ray" / "study-1" / "ablation-00-s0"
    write_result_lines(first, [{"iteration": 5, "checkpoint_dir_name": "checkpoint_000000"}])
    (first / "checkpoint_000000").mkdir()
    (first / "checkpoint_000000" / "checkpoint.pt").write_bytes(b"")
    second = tmp_path / "ray" / "study-2" / "ablation-00-s0"
    write_result_lines(
        second,
        [
            {"iteration": 10, "checkpoint_dir_name": "checkpoint_000001"},
            {"iteration": 15, "checkpoint_dir_name": "checkpoint_000002"},
        ],
    )
    (second / "checkpoint_000001").mkdir()
    (second / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"")
    found = latest_checkpoints(RunStore.open(tmp_path))
    assert found == {"ablation-00-s0": "ray/study-2/ablation-00-s0/checkpoint_000001"}


def finished(run_dir: Path, trial_id: str, state: str, val: float | None, done: int = 10) -> None:
    spec = search_trial(study(), int(trial_id.split("-")[1]), {"inner_lr": 0.01})
    ledger.write_record(
        run_dir,
        {"trial_id": trial_id, "phase": "search", "state": state, "val_metric": val, "iterations_done": done,
         "budget_iterations": 10, "spec": spec.to_json()},
    )


def test_confirm_ranks_only_full_budget_trials(tmp_path: Path) -> None:
    # stopped-early and failed trials are never ranked; MSE: lower is better
    finished(tmp_path, "search-000", "completed", 0.5)
    finished(tmp_path, "search-001", "stopped_early", 0.1, done=5)
    finished(tmp_path, "search-002", "completed", 0.3)
    finished(tmp_path, "search-003", "failed", None, done=2)
    finished(tmp_path, "search-004", "completed", 0.9)
    best = best_search_trials(RunStore.open(tmp_path), study(), higher_is_better=False)
    assert [t.trial_id for t in best] == ["search-002", "search-000"]
    assert [t.trial_id for t in best_search_trials(RunStore.open(tmp_path), study(), higher_is_better=True)] == [
        "search-004", "search-000",
    ]


def test_confirm_passes_over_the_base_arms_own_configuration(tmp_path: Path) -> None:
    # the base's own point would repeat its ablation trials: the next best is confirmed, unless no ablation runs
    for trial_id, inner_lr, val in (("search-000", 0.05, 0.9), ("search-001", 0.02, 0.7), ("search-002", 0.08, 0.8)):
        spec = search_trial(study(), int(trial_id[-3:]), {"inner_lr": inner_lr})
        ledger.write_record(
            tmp_path,
            {"trial_id": trial_id, "phase": "search", "state": "completed", "val_metric": val,
             "iterations_done": 10, "budget_iterations": 10, "spec": spec.to_json()},
        )
    best = best_search_trials(RunStore.open(tmp_path), study(), higher_is_better=True)
    assert [t.trial_id for t in best] == ["search-002", "search-001"]
    search_only = study(phases=["search", "confirm"])
    assert [t.trial_id for t in best_search_trials(RunStore.open(tmp_path), search_only, higher_is_better=True)] == [
        "search-000", "search-002",
    ]


def make_run(tmp_path: Path) -> Run:
    from mmlo.tasks.registry import get_benchmark

    s = study()
    return Run(s, Path("r.yaml"), RunStore.open(tmp_path), str(tmp_path), None, None, None, get_benchmark(s.benchmark))


def test_driver_finalises_what_the_worker_could_not(tmp_path: Path) -> None:
    # a stopped search trial becomes stopped_early with its iterations; a dead worker becomes failed
    run = make_run(tmp_path)
    config = {"optuna_number": 3, "inner_lr": 0.02}
    record = finalize_record(run, "search-003", config, {"iteration": 5, "val_metric": 0.4, "elapsed_s": 2.0}, None)
    assert (record["state"], record["iterations_done"], record["val_metric"]) == ("stopped_early", 5, 0.4)
    written = ledger.read_record(tmp_path, "search-003")
    assert written is not None and written["spec"]["overrides"] == {"inner_lr": 0.02}
    died = finalize_record(run, "ablation-00-s0", {"trial": ablation_trials(run.study)[0].to_json()}, {}, "worker died")
    assert (died["state"], died["failure_reason"], died["arm"]) == ("failed", "worker died", "MAML")


def test_worker_records_win(tmp_path: Path) -> None:
    # a record the worker finalised is never overwritten by the driver
    run = make_run(tmp_path)
    finished(tmp_path, "search-000", "completed", 0.5)
    record = finalize_record(run, "search-000", {"optuna_number": 0}, {"iteration": 5}, None)
    assert record["state"] == "completed" and record["iterations_done"] == 10


def test_dashboard_dependencies_are_installed() -> None:
    # `make setup` installs ray[default]; the (private) Ray check behind ray_dashboard_missing finds it
    assert ray_dashboard_missing() is None


def test_dashboard_url_is_printed_only_once_it_answers(capsys: pytest.CaptureFixture[str]) -> None:
    # a URL that answers HTTP (even 401) is printed; one where nothing listens never is
    import http.server
    import socket
    import threading

    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        announce_when_up(url, timeout_s=10).join(timeout=15)
    finally:
        server.shutdown()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    announce_when_up(dead, timeout_s=1.5).join(timeout=10)
    assert capsys.readouterr().out == f"dashboard: {url}\n"
