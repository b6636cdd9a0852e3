"""Faults on purpose, for the tests that show what mmlo guarantees after a fault mid-training.

A real divergence or a worker killed from outside cannot be timed by a test; these can, and from the point
they are injected on, everything is the real code path. ``MMLO_FAULTS`` in a trial worker's environment names
arms and what happens in their trials after the outer step of a given iteration::

    MMLO_FAULTS="Diverges:nan@3,Killed:kill@3"

- ``nan``: one weight of the learner becomes NaN, so the next meta-loss is NaN and ``fit`` stops with
  ``TrainingDiverged``, as a diverging learner does;
- ``kill``: the worker process sends itself SIGKILL, as the kernel's OOM killer or an operator would.

Nothing happens unless the variable is set; no study sets it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

FAULTS_ENV = "MMLO_FAULTS"
KINDS = ("nan", "kill")


@dataclass(frozen=True)
class Fault:
    """A fault for one arm's trials, injected after the outer step of ``iteration`` (a training hook)."""

    kind: str
    iteration: int

    @property
    def iterations(self) -> frozenset[int]:
        return frozenset({self.iteration})

    def __call__(self, iteration: int, learner: Any, benchmark: Any) -> None:
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        import torch

        with torch.no_grad():
            next(iter(learner.parameters())).view(-1)[0] = float("nan")


def parse(text: str) -> dict[str, Fault]:
    """``Arm:kind@iteration`` entries, comma-separated; ValueError naming an entry that is not one."""
    out: dict[str, Fault] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        arm, _, what = entry.rpartition(":")
        kind, _, at = what.partition("@")
        if not arm or kind not in KINDS or not at.isdigit() or int(at) < 1:
            raise ValueError(f"{FAULTS_ENV}: {entry!r} is not <arm>:<{'|'.join(KINDS)}>@<iteration>")
        out[arm] = Fault(kind, int(at))
    return out


def injected(arm: str) -> list[Fault]:
    """The fault ``MMLO_FAULTS`` asks for in ``arm``'s trials (none when it is unset)."""
    fault = parse(os.environ.get(FAULTS_ENV, "")).get(arm)
    return [fault] if fault is not None else []
