from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mmlo.orchestrator import lease
from mmlo.orchestrator.lease import LEASE_FILE, Holder, LeaseHeld, acquire, hold, read_holder, stale_reason
from mmlo.orchestrator.results import status_text
from mmlo.orchestrator.runner import run_study
from mmlo.orchestrator.spec import parse_study
from mmlo.storage import RunStore


def elsewhere(heartbeat_age_s: float) -> Holder:
    """A driver on another machine whose last heartbeat was ``heartbeat_age_s`` ago."""
    now = time.time()
    return Holder("other", "node-b", 4242, now - 3600, now - heartbeat_age_s, "boot-b", "pid:[1]", "99")


def exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def plant(store: RunStore, holder: Holder) -> None:
    store.write_json(LEASE_FILE, holder.to_json())


@pytest.fixture
def local(tmp_path: Path) -> RunStore:
    return RunStore.open(tmp_path / "run")


def test_lease_names_this_driver_and_is_gone_after_release(local: RunStore) -> None:
    # the lease file says host, pid and start; holding it twice is refused; release deletes it
    with hold(local, settle_s=0.0) as held:
        found = read_holder(local)
        assert found == held.holder and found.pid == os.getpid()
        assert set(local.read_json(LEASE_FILE)) >= {"host", "pid", "started_at", "heartbeat_at"}
        with pytest.raises(LeaseHeld) as refused:
            acquire(local, settle_s=0.0)
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and f"host {found.host}" in message and "--resume" in message
    assert not local.exists(LEASE_FILE)


def test_released_on_an_exception_and_on_ctrl_c(local: RunStore) -> None:
    # an error or Ctrl-C inside the driver still gives the run directory back
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), hold(local, settle_s=0.0):
            raise error
        assert read_holder(local) is None


def test_dead_driver_on_this_machine_is_stale_at_once(local: RunStore) -> None:
    # after kill -9 of a driver, its lease (fresh heartbeat, same machine) is taken over without waiting
    crashed = replace(Holder.here(), token="crashed", pid=exited_pid(), process_start=None)
    plant(local, crashed)
    assert "no longer running" in (stale_reason(crashed) or "")
    with hold(local, settle_s=0.0) as held:
        assert held.holder.token != "crashed"


def test_reused_pid_and_zombie_are_not_the_holder() -> None:
    # the holder's PID now belongs to another process (start time differs), or to a killed, unreaped one
    reused = replace(Holder.here(), process_start="1")
    assert stale_reason(reused) is not None
    child = subprocess.Popen(["sleep", "30"])
    try:
        alive = replace(Holder.here(), pid=child.pid, process_start=lease._process_start(child.pid))
        assert stale_reason(alive) is None
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # until it is a zombie, without reaping it
        assert stale_reason(alive) is not None
    finally:
        child.wait()


def test_other_machine_is_stale_only_after_the_limit(local: RunStore) -> None:
    # a holder elsewhere is judged by its heartbeat alone: refused at 5 s, taken over past the limit
    plant(local, elsewhere(5.0))
    with pytest.raises(LeaseHeld, match="host node-b, pid 4242"):
        acquire(local, settle_s=0.0)
    plant(local, elsewhere(lease.STALE_AFTER_S + 1))
    assert "heartbeat" in (stale_reason(elsewhere(lease.STALE_AFTER_S + 1)) or "")
    acquire(local, settle_s=0.0).release()


def test_heartbeat_advances_and_a_takeover_is_noticed(local: RunStore) -> None:
    # the thread refreshes the heartbeat; when another driver's lease replaces ours, on_lost is called once
    lost: list[Any] = []
    with hold(local, settle_s=0.0, heartbeat_s=0.05, on_lost=lambda held: lost.append(held.lost_to)) as held:
        first = read_holder(local)
        assert first is not None
        eventually("a newer heartbeat", lambda: read_holder(local).heartbeat > first.heartbeat)  # type: ignore[union-attr]
        plant(local, elsewhere(0.0))
        eventually("the takeover noticed", lambda: lost)
        assert [h.token for h in lost] == ["other"] and held.lost_to is not None
    # the lease of the driver that took over is not ours to delete
    assert read_holder(local).token == "other"  # type: ignore[union-attr]


def eventually(what: str, condition: Any, limit_s: float = 60.0) -> None:
    """Wait for ``condition()`` to hold; ``limit_s`` only guards against a hang (no claim about speed)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s"
        time.sleep(0.01)


def race(store: RunStore, drivers: int = 4) -> list[str]:
    """Start ``drivers`` acquisitions at the same instant; return 'won' or 'refused' for each."""
    barrier = threading.Barrier(drivers)
    outcome: list[str] = []

    def driver() -> None:
        barrier.wait()
        try:
            acquire(store)
            outcome.append("won")
        except LeaseHeld:
            outcome.append("refused")

    threads = [threading.Thread(target=driver) for _ in range(drivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def test_drivers_starting_together_one_wins_on_a_folder(local: RunStore) -> None:
    # write-then-confirm: of drivers that all found no lease, exactly one holds it
    assert sorted(race(local)) == ["refused", "refused", "refused", "won"]


def test_lease_on_an_object_store(s3_endpoint: str) -> None:
    # S3 (moto): the same guarantees without create-if-absent: held, refused, raced, released, stale
    store = RunStore.open(f"s3://runs/leases/run?{s3_endpoint}")
    with hold(store, settle_s=0.0) as held:
        assert read_holder(store) == held.holder
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            acquire(store, settle_s=0.0)
    assert not store.exists(LEASE_FILE)
    raced = RunStore.open(f"s3://runs/leases/race?{s3_endpoint}")
    assert sorted(race(raced, drivers=3)) == ["refused", "refused", "won"]
    plant(raced, elsewhere(lease.STALE_AFTER_S + 1))
    acquire(raced, settle_s=0.0).release()


def test_status_shows_the_holder_and_a_crashed_driver(local: RunStore) -> None:
    # `mmlo status` names the driver holding the run; a crashed one shows as interrupted, its lease stale
    local.write_json("provenance.json", {"sessions": [{"outcome": "running"}], "finished": None})
    with hold(local, settle_s=0.0):
        text = status_text(local, {"name": "s"})
        assert "state      running" in text and f"driver     host {os.uname().nodename}, pid {os.getpid()}" in text
    plant(local, replace(Holder.here(), pid=exited_pid(), process_start=None))
    text = status_text(local, {"name": "s"})
    assert "state      interrupted" in text and "stale" in text and "--resume" in text


def test_second_driver_refused_before_touching_the_run(local: RunStore, tmp_path: Path) -> None:
    # run_study with a live lease elsewhere: LeaseHeld (exit 2 in the CLI), nothing written
    study = parse_study(
        {"name": "run", "benchmark": {"name": "regression2"}, "arms": [{"name": "M", "learner": "maml"}]}
    )
    plant(local, elsewhere(1.0))
    before = sorted(local.list())
    with pytest.raises(LeaseHeld, match="node-b"):
        run_study(study, study_file=tmp_path / "s.yaml", out=tmp_path, resume=True, dashboard=False)
    assert sorted(local.list()) == before


def test_refused_resume_leaves_no_empty_folder(tmp_path: Path) -> None:
    # --resume where there is no run: the lease was taken and given back, and no run folder remains
    from mmlo.orchestrator.errors import UserError

    study = parse_study(
        {"name": "nothing", "benchmark": {"name": "regression2"}, "arms": [{"name": "M", "learner": "maml"}]}
    )
    with pytest.raises(UserError, match="no run to resume"):
        run_study(study, study_file=tmp_path / "s.yaml", out=tmp_path / "new" / "runs", resume=True, dashboard=False)
    assert list(tmp_path.iterdir()) == []
