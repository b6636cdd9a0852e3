"""The run directory's lease: one driver at a time runs a study in a run directory.

Two drivers on one run directory corrupt it: both tell Optuna the outcome of the same trials
(``UpdateFinishedTrialError``), both run the same trials, and each records as failed trials the other runs. A
driver therefore holds ``<run>/lease.json`` for as long as it runs: who holds it (host, PID, when it started)
and a heartbeat that a thread of the driver refreshes every :data:`HEARTBEAT_S` seconds.

The lease lives in the run's :class:`~mmlo.storage.RunStore`, so the same code guards a local folder, a shared
file system and an object store. An object store has no atomic create-if-absent, so a lease is taken by
write-then-confirm: a driver that finds no live lease writes its own, waits :func:`settle_seconds` (longer
than a write takes to land), and reads the lease back; only the driver that finds its own token there holds
it. Two drivers that start together both read back the last write, so exactly one of them goes on.

What the guarantees rest on: a lease is live while its holder runs. On the holder's own machine (same host
name, boot and PID namespace) that is checked directly: the lease is stale as soon as the holder process is
gone, so after ``kill -9`` or a crash a driver on that machine takes it at once. From another machine only
the heartbeat can tell: the lease is stale once its heartbeat is older than :data:`STALE_AFTER_S` seconds (the
machines' clocks must agree to within a few seconds, as NTP keeps them). A driver releases its lease when it
exits in any way Python sees (done, an error, Ctrl-C, SIGTERM); a driver whose lease was taken over (it could
not heartbeat for :data:`STALE_AFTER_S` seconds) learns it at its next heartbeat and stops.
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mmlo.orchestrator.errors import UserError
from mmlo.storage import LEASE_FILE, RunStore

#: Seconds between two heartbeats of the holding driver.
HEARTBEAT_S = 10.0
#: A lease whose heartbeat is older than this is stale (six missed heartbeats: a slow or briefly unreachable
#: store never loses a lease, a crashed driver on another machine frees it within a minute).
STALE_AFTER_S = 60.0


def settle_seconds(store: RunStore) -> float:
    """How long a driver waits between writing its lease and reading it back: longer than another driver's
    write can take to land (a rename on a file system; a PUT on an object store)."""
    return 0.5 if store.is_local else 2.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lease. ``boot_id``, ``pid_namespace`` and ``process_start`` tell, on the holder's own
    machine, whether the process with that PID is still the holder (PIDs are reused); None where the system
    does not say (outside Linux)."""

    token: str
    host: str
    pid: int
    started: float
    heartbeat: float
    boot_id: str | None = None
    pid_namespace: str | None = None
    process_start: str | None = None

    @classmethod
    def here(cls, now: float | None = None) -> Holder:
        """This process, as the holder of a new lease."""
        stamp = time.time() if now is None else now
        return cls(
            token=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=stamp,
            heartbeat=stamp,
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_link("/proc/self/ns/pid"),
            process_start=_process_start(os.getpid()),
        )

    @classmethod
    def from_json(cls, data: Any) -> Holder | None:
        """The holder a lease file names; None for anything that is not a lease."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                token=str(data["token"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                started=float(data["started"]),
                heartbeat=float(data["heartbeat"]),
                boot_id=data.get("boot_id"),
                pid_namespace=data.get("pid_namespace"),
                process_start=data.get("process_start"),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": _when(self.started), "heartbeat_at": _when(self.heartbeat)}

    def on_this_machine(self) -> bool:
        """Whether this process can see the holder's process table: same host name, same boot, same PID
        namespace (two containers may share a host name but not their processes)."""
        if self.host != socket.gethostname():
            return False
        here = (_read("/proc/sys/kernel/random/boot_id"), _link("/proc/self/ns/pid"))
        return here == (self.boot_id, self.pid_namespace)

    def describe(self, now: float | None = None) -> str:
        """``host vm, pid 1234, since 2026-12-01 10:09:09 +0000, last heartbeat 3 s ago``."""
        age = max(0.0, (time.time() if now is None else now) - self.heartbeat)
        return f"host {self.host}, pid {self.pid}, since {_when(self.started)}, last heartbeat {age:.0f} s ago"


def stale_reason(holder: Holder, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why ``holder``'s lease no longer holds, or None while it does."""
    if holder.on_this_machine():
        if not _alive(holder.pid, holder.process_start):
            return f"its driver (pid {holder.pid} on {holder.host}) is no longer running"
        # A live process on this machine holds its lease even when its heartbeat is late (suspended with
        # Ctrl-Z, or swapping): the user can see it and stop it.
        return None
    age = (time.time() if now is None else now) - holder.heartbeat
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (stale after {stale_after_s:.0f} s)"
    return None


class LeaseHeld(UserError):
    """Another driver holds the run directory; the message says who and what to do."""

    def __init__(self, store: RunStore, holder: Holder, stale_after_s: float = STALE_AFTER_S) -> None:
        self.holder = holder
        super().__init__(
            f"{store} is in use by another mmlo driver ({holder.describe()}): two drivers on one run directory "
            f"would run the same trials twice. Wait for it to finish (`mmlo status {store}` shows its progress), "
            f"or stop it (Ctrl-C in its terminal, or `kill {holder.pid}` on {holder.host}) and then resume with "
            f"--resume. If that driver crashed, --resume works at once on {holder.host} and after "
            f"{stale_after_s:.0f} s without a heartbeat from any other machine"
        )


def read_holder(store: RunStore) -> Holder | None:
    """The lease's holder, or None when there is no lease (or an unreadable one, which holds nothing)."""
    try:
        return Holder.from_json(store.read_json(LEASE_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


@dataclass
class Lease:
    """A lease this driver holds; :meth:`release` gives it back."""

    store: RunStore
    holder: Holder
    lost_to: Holder | None = None

    def refresh(self, now: float | None = None) -> bool:
        """One heartbeat; False (and ``lost_to`` set) when another driver holds the lease now."""
        found = read_holder(self.store)
        if found is not None and found.token != self.holder.token:
            self.lost_to = found
            return False
        self.holder = replace(self.holder, heartbeat=time.time() if now is None else now)
        self.store.write_json(LEASE_FILE, self.holder.to_json())
        return True

    def release(self) -> None:
        """Delete the lease if it is still this driver's (never another driver's that took it over)."""
        found = read_holder(self.store)
        if found is not None and found.token == self.holder.token:
            self.store.delete(LEASE_FILE)


def acquire(store: RunStore, *, settle_s: float | None = None, stale_after_s: float = STALE_AFTER_S) -> Lease:
    """Take the run directory's lease; :class:`LeaseHeld` when a live driver holds it or wins the race."""
    current = read_holder(store)
    if current is not None and stale_reason(current, stale_after_s=stale_after_s) is None:
        raise LeaseHeld(store, current, stale_after_s)
    mine = Holder.here()
    store.write_json(LEASE_FILE, mine.to_json())
    time.sleep(settle_seconds(store) if settle_s is None else settle_s)
    found = read_holder(store)
    if found is None:
        raise UserError(
            f"{store}: the lease this driver wrote ({LEASE_FILE}) is gone again: another mmlo driver is starting "
            "on this run directory at the same moment; wait for it, or try again"
        )
    if found.token != mine.token:
        # Another driver wrote its lease after this one: that driver holds the run directory.
        raise LeaseHeld(store, found, stale_after_s)
    return Lease(store, mine)


def _stop_this_driver(lease: Lease) -> None:
    """What a driver does when its lease was taken over: say so, and stop as Ctrl-C stops it."""
    holder = lease.lost_to
    who = holder.describe() if holder is not None else "another driver"
    print(
        f"\nerror: {lease.store} was taken over by another mmlo driver ({who}) while this one could not renew "
        "its lease; this driver stops",
        file=sys.stderr,
        flush=True,
    )
    _thread.interrupt_main()


@contextmanager
def hold(
    store: RunStore,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
    settle_s: float | None = None,
    on_lost: Callable[[Lease], None] = _stop_this_driver,
) -> Iterator[Lease]:
    """Hold the run directory's lease for the duration, heartbeating from a daemon thread."""
    created = _missing_folders(store)
    lease = acquire(store, settle_s=settle_s, stale_after_s=stale_after_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                if not lease.refresh():
                    on_lost(lease)
                    return
            except Exception:  # noqa: BLE001 - a full disk or an unreachable store: try again at the next beat
                continue

    thread = threading.Thread(target=beat, name="mmlo-lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=heartbeat_s)
        try:
            lease.release()
        except OSError as err:
            print(f"note: could not remove the lease {store.where(LEASE_FILE)} ({err})", file=sys.stderr)
        # A driver that stopped before writing anything (a refused --resume) leaves no empty folders behind.
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_folders(store: RunStore) -> list[Path]:
    """The folders, deepest first, that writing the lease will create on a file system (none on a store)."""
    missing: list[Path] = []
    folder = store.local_path
    while folder is not None and not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(stamp))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces): state is [0], start time [19]."""
    text = _read(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text and ")" in text else None


def _process_start(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int, process_start: str | None) -> bool:
    """Whether the process ``pid`` runs and is the one that started at ``process_start`` (not a reuse of its
    PID); a zombie (killed, not yet reaped) is not running."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] != "Z" and (process_start is None or fields[19] == process_start)
    if Path("/proc/self/stat").exists():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
