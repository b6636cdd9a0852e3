"""Hostile study files: whatever a study file holds, `mmlo validate` answers within seconds, exit code 2.

A held-out corpus of malformed and malicious studies (alias bombs, deep nesting, bad encodings, non-finite
numbers, path tricks, wrong types ...). Each must be refused with one line that names the offending key
path or line, and never with a Python traceback. The whole corpus runs through the CLI's own entry point
in one subprocess (fast); the most dangerous cases also run through the real `mmlo` executable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: A valid study of four lines; most cases append a fifth line that breaks it.
BASE = "name: t\nbenchmark: {name: regression2, shots: 5, query: 5}\narms:\n  - {name: MAML, learner: maml}\n"
#: A guard against a hang, not a speed limit (speed is `mmlo bench`'s business): a file still unanswered after
#: this long fails its case (the per-file alarm; the subprocess timeout of the real-executable cases).
DEADLINE_S = 120


@dataclass(frozen=True)
class Hostile:
    """One corpus entry: the file's bytes and a fragment the error line must hold (line and key path)."""

    id: str
    content: bytes
    expect: str
    real: bool = False  # also run through the real `mmlo validate` executable


def _after(line: str) -> bytes:
    """BASE with one more line (line 5) that makes it hostile."""
    return (BASE + line + "\n").encode("utf-8")


def _searching(param: str, extra: str = "") -> bytes:
    """BASE with a search block; ``param`` is on line 8 (line 7 with ``extra``, which then comes first)."""
    return (BASE + "search:\n  trials: 2\n" + extra + "  space:\n    " + param + "\n").encode("utf-8")


def _renamed(name: str) -> bytes:
    return BASE.replace("name: t", f"name: {name}", 1).encode("utf-8")


def _bomb() -> bytes:
    # "Billion laughs": nine levels of nine aliases stand for 9**9 strings in ten short lines.
    lines = ["name: bomb", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _merge_bomb() -> bytes:
    # The same growth through merge keys: each level merges ten copies of the one before.
    text = BASE + "m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\n"
    text += "".join(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}\n" for i in range(1, 8))
    return text.encode("utf-8")


def _deep_aliases() -> bytes:
    # Ten levels per line, each line aliasing the one before: shallow to write, deep once expanded.
    text = BASE + "".join(f"k{i}: &k{i} " + "[" * 10 + (f"*k{i - 1}" if i else "1") + "]" * 10 + "\n" for i in range(6))
    return text.encode("utf-8")


NO_USER = "~nosuchuser-mmlo"
CORPUS = [
    # Budgets: nothing may hang or exhaust memory.
    Hostile("alias-bomb", _bomb(), ":6: e.5: alias *d stands for 7381 values", real=True),
    Hostile("merge-key-bomb", _merge_bomb(), ":9: m4.<<.1: alias *m3 stands for"),
    Hostile("recursive-alias", _after("model: &m {hidden: *m}"), ":5: model.hidden: alias *m refers to", real=True),
    Hostile("deep-flow-nesting", _after("description: " + "[" * 20000 + "]" * 20000), ":5: description.0.0", real=True),
    Hostile(
        "deep-block-nesting",
        _after("model:\n" + "\n".join(" " * i + f"k{i}:" for i in range(1, 80))),
        ":54: model.k1.k2.k3",
    ),
    Hostile("deep-alias-nesting", _deep_aliases(), ":9: k4.0.0.0.0.0.0.0.0.0.0: alias *k3 nests the document"),
    Hostile("too-many-values", _after("seeds: [" + ",".join(["0"] * 60000) + "]"), ":5: seeds.49980: the file holds"),
    Hostile("many-documents", b"---\n" * 60000, ":50002: the file holds more than 50000 values"),
    Hostile("file-too-large", _after("#" * 300_000), ": is larger than 256 KiB", real=True),
    Hostile("huge-integer", _after("seeds: [" + "9" * 5000 + "]"), ":5: seeds.0: an integer of 5000 digits"),
    Hostile("integer-beyond-64-bits", _after("eval_seed: 99999999999999999999"), ":5: eval_seed: integer 9999"),
    Hostile("long-key", _after("? " + "k" * 100_000 + "\n: 1"), "kkk…: unknown key"),
    Hostile("huge-string", _after("budget: {iterations: '" + "x" * 200_000 + "'}"), ":5: budget.iterations: Input"),
    # Encodings and characters.
    Hostile("latin-1", (BASE + "description: café\n").encode("latin-1"), ":5: is not UTF-8 text (byte", real=True),
    Hostile("utf-16", BASE.encode("utf-16"), ":1: is UTF-16 text"),
    Hostile("nul-byte", _after("description: a\x00b"), ":5: character U+0000 is not allowed", real=True),
    Hostile("binary-junk", bytes(range(256)) * 4, ": is not UTF-8 text"),
    Hostile("escape-in-arm-name", _after('  - {name: "\\e[2Jgone", learner: maml}'), ":5: arms.1.name: text holds"),
    Hostile("bidi-override", _after('description: "safe \\u202e txt.exe"'), ":5: description: text holds the control"),
    Hostile("control-in-key", _after('"\\e[31mred": 1'), ":5: \\x1b[31mred: the key holds control"),
    # Non-finite numbers, wherever they are.
    Hostile("inf-lr", _after("train: {lr: .inf}"), ":5: train.lr: must be a finite number, not .inf", real=True),
    Hostile("nan-arm-inner-lr", _after("  - {name: B, learner: maml, inner_lr: .nan}"), ":5: arms.1.inner_lr: must be"),
    Hostile(
        "neg-inf-arm-override",
        _after("  - {name: B, learner: maml, train: {grad_clip: -.inf}}"),
        ":5: arms.1.train.grad_clip: must be a finite number, not -.inf",
    ),
    Hostile("inf-search-bound", _searching("lr: {type: float, low: 0.001, high: .inf}"), ":8: search.space.lr.high:"),
    Hostile("float-overflow", _after("model: {inner_lr: 1.0e+999}"), ":5: model.inner_lr: must be a finite number"),
    Hostile("quoted-nan", _after("train: {lr_decay_factor: 'nan'}"), ":5: train.lr_decay_factor: Input should"),
    Hostile("inf-choice", _searching("lr: {type: categorical, choices: [0.1, 'inf']}"), ":8: search.space.lr: choice"),
    Hostile("inf-transference-alpha", _after("transference: {alpha: .inf}"), ":5: transference.alpha: must be"),
    Hostile("nan-resources", _after("resources: {gpus_per_trial: .nan}"), ":5: resources.gpus_per_trial:"),
    # YAML features with no place in a study.
    Hostile("python-tag", _after("description: !!python/object/apply:os.system ['touch x']"), ":5: YAML syntax error"),
    Hostile("binary-tag", _after("description: !!binary aGVsbG8="), ":5: description: !!binary values"),
    Hostile("set-tag", _after("seeds: !!set {1, 2}"), ":5: seeds: !!set values"),
    Hostile("impossible-date", _after("description: 2024-13-45"), ":5: description: cannot read '2024-13-45'"),
    Hostile("bad-float-tag", _after("model: {inner_lr: !!float fast}"), ":5: model.inner_lr: cannot read 'fast'"),
    Hostile("duplicate-key", _after("name: u"), ":5: name: duplicate key (also on line 1)"),
    Hostile("duplicate-anchor", _after("description: [&a 1, &a 2]"), ":5: description.1: anchor &a is defined twice"),
    Hostile("undefined-alias", _after("model: *defaults"), ":5: YAML syntax error: found undefined alias"),
    Hostile("unhashable-key", _after("? [a, b]\n: 1"), ":5: YAML syntax error: found unhashable key"),
    Hostile("syntax-error", b"name: t\narms: [\n  {name: a\nseeds: [0]\n", ":4: YAML syntax error"),
    Hostile("tab-indentation", b"name: t\narms:\n\t- {name: a}\n", ":3: YAML syntax error"),
    # Shape, types and ranges.
    Hostile("empty-file", b"", ": the file is empty"),
    Hostile("only-comments", b"# name: t\n", ": the file is empty"),
    Hostile("top-level-list", b"- name: t\n- arms: []\n", ": a study is a YAML mapping of keys, not a list"),
    Hostile("top-level-scalar", b"just some text\n", ": a study is a YAML mapping of keys, not a str"),
    Hostile("unknown-key", _after("seed: [1]"), ":5: seed: unknown key"),
    Hostile("unknown-nested-key", _after("  - {name: K, learner: kml, kml_rnk: 2}"), ":5: arms.1.kml_rnk: unknown key"),
    Hostile("wrong-type", _after("seeds: three"), ":5: seeds: Input should be a valid list"),
    Hostile("arms-as-mapping", b"name: t\narms: {name: MAML}\n", ":2: arms: Input should be a valid list"),
    Hostile("out-of-range", BASE.replace("shots: 5", "shots: 0").encode(), ":2: benchmark.shots: Input should be"),
    Hostile("negative-budget", _after("budget: {iterations: -10}"), ":5: budget.iterations: Input should be greater"),
    Hostile(
        "sampler-seed-negative",
        _searching("inner_lr: {type: float, low: 0.001, high: 0.1}", extra="  sampler_seed: -1\n"),
        ":7: search.sampler_seed: Input should be greater than or equal to 0",
    ),
    Hostile(
        "zero-step",
        _searching("inner_lr: {type: float, low: 0.001, high: 0.1, step: 0}"),
        ":8: search.space.inner_lr.step: Input should be greater than 0",
    ),
    Hostile(
        "fractional-int-step",
        _searching("inner_steps: {type: int, low: 1, high: 5, step: 0.5}"),
        ":8: search.space.inner_steps: an int parameter needs an integer step",
    ),
    Hostile("same-names", (BASE + "---\n" + BASE).encode(), ": name: the documents of one file need distinct"),
    # Path tricks.
    Hostile("name-parent-dirs", _renamed("../../etc"), ":1: name: String should match pattern", real=True),
    Hostile("name-absolute", _renamed("/etc/cron.d"), ":1: name: String should match pattern"),
    Hostile("name-slash", _renamed("runs/x"), ":1: name: String should match pattern"),
    Hostile("name-dot", _renamed("."), ":1: name: String should match pattern"),
    Hostile("name-trailing-newline", _renamed('"t\\n"'), ":1: name: String should match pattern"),
    Hostile("name-too-long", _renamed("n" * 81), ":1: name: String should have at most 80"),
    Hostile("output-unknown-user", _after(f"output: {NO_USER}/runs"), f":5: output: cannot expand '{NO_USER}'"),
    Hostile(
        "root-unknown-user",
        BASE.replace("query: 5", f"query: 5, root: {NO_USER}/data").encode(),
        f":2: benchmark.root: cannot expand '{NO_USER}'",
    ),
]


#: Runs `mmlo validate FILE` through the CLI's entry point for each file, in this one process, and prints one
#: JSON object per file: exit code, stderr and stdout (an alarm stands in for a per-file timeout).
_DRIVER = r"""
import contextlib, io, json, signal, sys, traceback
from mmlo.orchestrator.cli import main

def timeout(signum, frame):
    raise TimeoutError("no answer within the deadline")

signal.signal(signal.SIGALRM, timeout)
deadline, files = int(sys.argv[1]), sys.argv[2:]
for file in files:
    out, err = io.StringIO(), io.StringIO()
    signal.alarm(deadline)
    sys.argv = ["mmlo", "validate", file]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = -1
    signal.alarm(0)
    print(json.dumps({"file": file, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()}), flush=True)
"""


def _write(tmp_path: Path, case: Hostile) -> Path:
    path = tmp_path / f"{case.id}.yaml"
    path.write_bytes(case.content)
    return path


def _check_answer(case: Hostile, path: Path, code: int, stderr: str, stdout: str) -> None:
    assert code == 2, f"{case.id}: exit {code}\n{stderr}{stdout}"
    assert "Traceback" not in stderr + stdout, f"{case.id}: {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), f"{case.id}: {stderr}"
    assert case.expect in lines[0], f"{case.id}: expected {case.expect!r} in {lines[0]!r}"
    assert len(lines[0]) < 500, f"{case.id}: a {len(lines[0])}-character message"


def _mmlo() -> list[str]:
    executable = Path(sys.executable).with_name("mmlo")
    return [str(executable)] if executable.exists() else [sys.executable, "-m", "mmlo.orchestrator"]


def test_corpus_is_large_and_distinct() -> None:
    # the held-out corpus holds at least 25 distinct hostile studies
    assert len(CORPUS) >= 25 and len({c.id for c in CORPUS}) == len(CORPUS)


def test_corpus_is_refused_without_traceback(tmp_path: Path) -> None:
    # every corpus file: exit 2 (no hang), one line naming file, line and key, no traceback
    paths = {case.id: _write(tmp_path, case) for case in CORPUS}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(DEADLINE_S), *map(str, paths.values())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S * len(CORPUS),
    )
    answers = {Path(a["file"]).stem: a for a in map(json.loads, proc.stdout.splitlines())}
    assert set(answers) == set(paths), proc.stderr
    for case in CORPUS:
        answer = answers[case.id]
        _check_answer(case, paths[case.id], answer["code"], answer["stderr"], answer["stdout"])


@pytest.mark.parametrize("case", [c for c in CORPUS if c.real], ids=lambda c: c.id)
def test_real_executable_refuses_hostile_study(tmp_path: Path, case: Hostile) -> None:
    # the installed `mmlo validate` answers a hostile file: exit 2, one line, no traceback
    path = _write(tmp_path, case)
    proc = subprocess.run(
        [*_mmlo(), "validate", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S
    )
    _check_answer(case, path, proc.returncode, proc.stderr, proc.stdout)
