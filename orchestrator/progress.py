"""The live progress display of ``mmlo study``: one compact status line instead of Ray's status tables.

:class:`StudyProgress` holds the state (trials done, running, failed, stopped early, the best validation
score so far, elapsed time and an ETA) and renders it; it knows nothing about Ray, so it is tested alone.
The driver feeds it from its trial events (:mod:`mmlo.orchestrator.trial_events`, which the Tune callback
calls). On a terminal the status line is redrawn in place; in a log (not a TTY) each finished trial prints
one line, and the status line repeats every ``heartbeat_s``.

The ETA compares the work each trial was expected to take (the calibrated seconds, or its iterations when
nothing was calibrated) with the time the trials finished or in progress actually took, and spreads the
remaining expected work over the trials that run at once.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def duration(seconds: float | None) -> str:
    """'45s', '3m07s', '1h02m'; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


@dataclass
class _Trial:
    label: str
    expected: float
    budget: int
    state: str = "pending"
    iteration: int = 0
    elapsed: float = 0.0


@dataclass
class StudyProgress:
    """Counts, best score and ETA of a study's trials, rendered as one line."""

    higher_is_better: bool
    metric: str
    concurrency: int = 1
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    heartbeat_s: float = 60.0
    interactive: bool | None = None
    phase: str = ""
    _trials: dict[str, _Trial] = field(default_factory=dict)
    _best: tuple[float, str] | None = None
    _started: float = field(default_factory=time.monotonic)
    _last_draw: float = 0.0
    _drawn: bool = False

    def __post_init__(self) -> None:
        if self.interactive is None:
            self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def plan(self, trial_id: str, label: str, expected: float, budget: int, state: str = "pending") -> None:
        """Announce a trial (``expected``: seconds or iterations it should take); finished ones count as done."""
        self._trials[trial_id] = _Trial(label, expected, budget, state)

    def knows(self, trial_id: str) -> bool:
        return trial_id in self._trials

    def claim(self, prefix: str, trial_id: str, label: str, expected: float, budget: int) -> None:
        """A trial takes the place of a placeholder (a search trial gets its id only when Optuna samples it)."""
        placeholder = next((k for k in self._trials if k.startswith(prefix)), None)
        if placeholder is not None:
            del self._trials[placeholder]
        self.plan(trial_id, label, expected, budget)

    def drop(self, prefix: str) -> None:
        """Forget placeholders that no trial will take (fewer trials to confirm than planned)."""
        for key in [k for k in self._trials if k.startswith(prefix)]:
            del self._trials[key]

    def started(self, trial_id: str) -> None:
        if trial_id in self._trials:
            self._trials[trial_id].state = "running"

    def result(self, trial_id: str, iteration: int, elapsed: float, value: float | None) -> None:
        trial = self._trials.get(trial_id)
        if trial is None:
            return
        trial.state, trial.iteration, trial.elapsed = "running", iteration, elapsed
        self._consider(trial, value)

    def finished(
        self, trial_id: str, state: str, iteration: int, value: float | None, wall: float | None, note: str = ""
    ) -> None:
        """A trial ended: ``state`` is completed | stopped_early | failed; prints one line about it."""
        trial = self._trials.get(trial_id)
        if trial is None:
            return
        trial.state, trial.iteration = state, iteration
        trial.elapsed = wall if wall is not None else trial.elapsed
        if state == "completed":
            trial.iteration = trial.budget
            self._consider(trial, value)
        shown = "" if value is None or not math.isfinite(value) else f"  val {self.metric} {value:.4f}"
        word = {"completed": "done", "stopped_early": "stopped", "failed": "FAILED"}.get(state, state)
        if state == "stopped_early":
            shown += f"  (stopped early at {trial.iteration}/{trial.budget})"
        self._clear()
        self.stream.write(f"  {word:<7} {trial_id:<24} {trial.label}{shown}  {duration(wall)}{note}\n")
        self.tick(force=True)

    def note(self, text: str) -> None:
        """Print one line above the status line (a trial retried after a failure)."""
        self._clear()
        self.stream.write(text.rstrip() + "\n")
        self.tick(force=True)

    def _consider(self, trial: _Trial, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        better = self._best is None or (value > self._best[0] if self.higher_is_better else value < self._best[0])
        if better:
            self._best = (value, trial.label)

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "running": 0, "completed": 0, "stopped_early": 0, "failed": 0}
        for trial in self._trials.values():
            out[trial.state] = out.get(trial.state, 0) + 1
        return out

    def eta(self) -> float | None:
        """Seconds left, or None before any trial has made measurable progress."""
        actual = expected = remaining = 0.0
        for t in self._trials.values():
            fraction = min(1.0, t.iteration / t.budget) if t.budget else 0.0
            # Trials finished in an earlier session were not timed in this one (elapsed 0): no rate from them.
            if (t.state == "completed" and t.elapsed > 0) or (t.state == "running" and fraction > 0):
                actual += t.elapsed
                expected += t.expected * (1.0 if t.state == "completed" else fraction)
            if t.state == "pending":
                remaining += t.expected
            elif t.state == "running":
                remaining += t.expected * (1.0 - fraction)
        if expected <= 0:
            return None
        return remaining * (actual / expected) / max(1, self.concurrency)

    def line(self) -> str:
        c = self.counts()
        total = sum(c.values())
        done = c["completed"] + c["stopped_early"] + c["failed"]
        parts = [
            f"[{self.phase}] " if self.phase else "",
            f"{done}/{total} trials done",
            f" · {c['running']} running",
            f" · {c['failed']} failed" if c["failed"] else "",
            f" · {c['stopped_early']} stopped early" if c["stopped_early"] else "",
        ]
        if self._best is not None:
            parts.append(f" · best val {self.metric} {self._best[0]:.4f} ({self._best[1]})")
        parts.append(f" · {duration(time.monotonic() - self._started)} elapsed")
        if done < total:
            parts.append(f" · ETA {duration(self.eta())}")
        return "".join(parts)

    def tick(self, force: bool = False) -> None:
        """Redraw the status line (at most once a second on a terminal, every heartbeat in a log)."""
        now = time.monotonic()
        interval = 1.0 if self.interactive else self.heartbeat_s
        if not force and now - self._last_draw < interval:
            return
        if not self.interactive and not force:
            self.stream.write(self.line() + "\n")
        elif self.interactive:
            self.stream.write("\r\x1b[2K" + self.line())
            self._drawn = True
        self._last_draw = now
        self.stream.flush()

    def _clear(self) -> None:
        if self.interactive and self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False

    def close(self) -> None:
        """End the status line (print the final one in logs)."""
        if self.interactive:
            self._clear()
        self.stream.write(self.line() + "\n")
        self.stream.flush()
