"""The CLI front door, through a real subprocess: help, version, validate, schema, and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mmlo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmlo.orchestrator", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_command_tree() -> None:
    # `mmlo --help` shows every command of the design
    out = mmlo("--help")
    assert out.returncode == 0
    commands = ("study", "validate", "schema", "status", "results", "report", "data", "bench", "transference", "train")
    for command in commands:
        assert command in out.stdout


def test_version() -> None:
    # `mmlo --version` prints the installed version
    out = mmlo("--version")
    assert out.returncode == 0 and out.stdout.startswith("mmlo 0.")


def test_validate_shipped_studies() -> None:
    # the front-door and smoke studies validate, with a summary of arms, trials and concurrency
    for name in ("kml_ablation", "smoke"):
        out = mmlo("validate", f"studies/{name}.yaml")
        assert out.returncode == 0, out.stderr
        assert f"study {name}" in out.stdout and "trials" in out.stdout and "at once" in out.stdout


def test_schema_is_json_schema() -> None:
    # `mmlo schema` prints a JSON Schema document
    out = mmlo("schema")
    schema = json.loads(out.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/") and schema["title"] == "mmlo study"


def test_bad_study_exits_2_with_one_message(tmp_path: Path) -> None:
    # bad input: exit code 2, one line naming file, line and key, and no traceback
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\narms:\n  - {name: a, learner: protonet}\nbudget: {iterations: -1}\n")
    out = mmlo("validate", str(path))
    assert out.returncode == 2
    assert f"{path}:4: budget.iterations" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(tmp_path: Path) -> None:
    # --debug trades the one-line message for the full traceback
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nbudget: 3\n")
    out = mmlo("--debug", "validate", str(path))
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_missing_study_file_exits_2(tmp_path: Path) -> None:
    # a missing file is named and exits 2
    out = mmlo("validate", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_train_prints_reports_and_test_means() -> None:
    # `mmlo train` trains without Ray, prints one JSON line per validation and a test line per mode
    out = mmlo("train", "--learner", "maml", "--iterations", "2", "--val-interval", "1", "--meta-batch", "4",
               "--val-episodes", "2", "--eval-episodes", "3", "--inner-steps", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"val_metric"') == 2
    assert "sinusoid mse after" in out.stdout and "linear mse after" in out.stdout


def test_train_bad_input_is_one_message() -> None:
    # an unknown benchmark or learner is named, with exit code 2 and no traceback
    for args, fragment in ((("--benchmark", "nope"), "unknown benchmark 'nope'"), (("--learner", "nope"), "learner:")):
        out = mmlo("train", *args, "--iterations", "1")
        assert out.returncode == 2 and fragment in out.stderr and "Traceback" not in out.stderr
