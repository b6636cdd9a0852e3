"""The ``mmlo`` command line: one Typer app, one command per job, heavy imports deferred to the command.

Data flows one way: study YAML -> spec -> Tune trials -> Parquet -> report. Every command turns bad
input into one clear message and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mmlo.orchestrator.errors import UserError

app = typer.Typer(
    name="mmlo",
    help=(
        "mmlo: the multimodal meta-learning orchestrator. Runs MMAML / KML / MAML / ProtoNet studies on "
        "Ray Tune with Optuna, writes Parquet, and renders an offline HTML ablation report."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Benchmarks: list them, prepare their data, look at samples.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state: dict[str, bool] = {"debug": False}
T = TypeVar("T")

StudyFile = Annotated[Path, typer.Argument(help="Study YAML file, e.g. studies/kml_ablation.yaml.")]
RunDir = Annotated[
    str, typer.Argument(help="Run directory: <output>/<study name>, a local path or a storage URI (s3://...).")
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mmlo {version('mmlo')}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")] = False,
    _version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("MMLO_DEBUG") == "1"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; user errors become one message and exit code 2."""
    from mmlo.reports.errors import ReportError
    from mmlo.storage import StorageError
    from mmlo.tasks.errors import DataMissingError

    try:
        return fn()
    except (UserError, DataMissingError, ReportError, StorageError) as err:
        if _state["debug"]:
            raise
        raise _fail(str(err)) from None
    except ModuleNotFoundError as err:
        if _state["debug"]:
            raise
        raise _fail(
            f"missing Python package '{err.name}': reinstall mmlo with `pip install -e '.[dev]'` "
            "(or `make setup`)"
        ) from None


def _load(file: Path) -> Any:
    from mmlo.orchestrator.spec import load_study

    return load_study(file)


def _load_all(file: Path) -> list[Any]:
    from mmlo.orchestrator.spec import load_studies

    return load_studies(file)


@app.command()
def validate(file: StudyFile) -> None:
    """Check a study file and print a one-screen summary (arms, search space, trials, budget, concurrency)."""

    def body() -> None:
        from mmlo.orchestrator.summary import summarize

        typer.echo("\n\n".join(summarize(study, file) for study in _load_all(file)))

    _guard(body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of study files (point your editor's YAML plugin at it)."""
    from mmlo.orchestrator.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def study(
    file: StudyFile,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Where the run directory goes (overrides the study's 'output'): a folder, or on a cluster without "
            "a shared file system an object-store URI every node reaches (s3://bucket/prefix?endpoint_override=...).",
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join an existing Ray cluster (e.g. 'auto' or 'host:6379').")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=1, help="Cap on trials running at once.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish an interrupted study without re-running finished trials.")
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option("--dashboard/--no-dashboard", help="Start Ray's dashboard and print its URL once it answers."),
    ] = True,
) -> None:
    """Run a study (or each study of a multi-document file): ablation, Optuna search, confirm; Parquet; report."""

    def body() -> int:
        from mmlo.orchestrator.runner import run_study

        code = 0
        for one in _load_all(file):
            code = max(
                code,
                run_study(
                    one,
                    study_file=file,
                    out=out,
                    address=address,
                    max_concurrent=max_concurrent,
                    resume=resume,
                    dashboard=dashboard,
                ),
            )
        return code

    raise typer.Exit(_guard(body))


@app.command()
def status(run_dir: RunDir) -> None:
    """Show the progress of a study (works while it runs, from another terminal)."""

    def body() -> None:
        from mmlo.orchestrator.results import show_status

        show_status(run_dir)

    _guard(body)


class AllocatorPolicy(str, Enum):
    """Which malloc ``mmlo bench`` runs its case processes on (``mmlo.models.allocator.choose``)."""

    auto = "auto"
    jemalloc = "jemalloc"
    system = "system"


class BenchDevice(str, Enum):
    """Where ``mmlo bench`` times its cases."""

    cpu = "cpu"
    cuda = "cuda"


class ResultFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def results(
    run_dir: RunDir,
    format: Annotated[ResultFormat, typer.Option("--format", help="table | csv | json.")] = ResultFormat.table,
) -> None:
    """Print the ablation table: arm x mode, mean ± 95 % CI over test episodes."""

    def body() -> None:
        from mmlo.orchestrator.results import show_results

        show_results(run_dir, format.value)

    _guard(body)


@app.command()
def report(
    run_dir: RunDir,
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default RUN_DIR/report.html).")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also write every chart as a PNG into this folder.")] = None,
) -> None:
    """Write the offline HTML ablation report of a run directory."""

    def body() -> None:
        from mmlo.reports.html import write_report

        path = write_report(run_dir, out=out, png_dir=png)
        typer.echo(f"report: {path}")

    _guard(body)


@app.command()
def transference(
    run_dir: RunDir,
    trial: Annotated[str, typer.Option("--trial", help="Trial id (see `mmlo status RUN_DIR`).")],
    checkpoint: Annotated[
        int | None, typer.Option("--checkpoint", help="Iteration of the checkpoint (default: the latest).")
    ] = None,
    sources: Annotated[int | None, typer.Option("--sources", min=1, help="Source tasks per mode.")] = None,
    targets: Annotated[int | None, typer.Option("--targets", min=1, help="Target tasks per mode.")] = None,
) -> None:
    """Measure task-level transference of a saved checkpoint; appends to transference.parquet."""

    def body() -> None:
        from mmlo.orchestrator.transference_cmd import measure_checkpoint

        measure_checkpoint(run_dir, trial=trial, checkpoint=checkpoint, sources=sources, targets=targets)

    _guard(body)


@app.command()
def train(
    benchmark: Annotated[
        str, typer.Option("--benchmark", help="A registered benchmark (`mmlo data list`).")
    ] = "regression2",
    learner: Annotated[
        str, typer.Option("--learner", help="maml | multi_maml | mmaml | protonet | ... | kml")
    ] = "mmaml",
    base: Annotated[str | None, typer.Option("--base", help="kml only: protonet | maml")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1)] = 200,
    meta_batch: Annotated[
        int | None, typer.Option("--meta-batch", min=1, help="default: 25 per mode (regression), 2 per mode (images)")
    ] = None,
    shots: Annotated[int | None, typer.Option("--shots", min=1, help="default: 5 (regression), 1 (images)")] = None,
    query: Annotated[int | None, typer.Option("--query", min=1, help="default: 5 (regression), 15 (images)")] = None,
    ways: Annotated[int, typer.Option("--ways", min=1)] = 5,
    image_size: Annotated[int, typer.Option("--image-size", min=1)] = 32,
    max_classes: Annotated[int | None, typer.Option("--max-classes", min=1)] = None,
    inner_lr: Annotated[
        float | None, typer.Option("--inner-lr", help="default: 0.001 (regression), 0.05 (images)")
    ] = None,
    inner_steps: Annotated[int, typer.Option("--inner-steps", min=0)] = 5,
    first_order: Annotated[bool, typer.Option("--first-order", help="First-order MAML.")] = False,
    inner_grad_clip: Annotated[
        float | None, typer.Option("--inner-grad-clip", help="Rescale each inner gradient to this norm.")
    ] = None,
    inner_grad_clamp: Annotated[
        float | None,
        typer.Option("--inner-grad-clamp", help="Clamp each inner-gradient element (MMAML's code: 10 regression)."),
    ] = None,
    grad_clip: Annotated[
        float | None, typer.Option("--grad-clip", help="Global norm clip of the meta-gradient.")
    ] = None,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    val_interval: Annotated[int, typer.Option("--val-interval", min=1)] = 50,
    val_episodes: Annotated[int, typer.Option("--val-episodes", min=1)] = 20,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", min=1)] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    eval_seed: Annotated[int, typer.Option("--eval-seed")] = 1234,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="Write checkpoints here.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="A checkpoint directory to continue from.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu (default) or cuda")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads")] = 1,
) -> None:
    """Meta-train one learner on one benchmark without Ray, printing every validation (for debugging)."""

    def body() -> None:
        import torch
        from pydantic import ValidationError

        from mmlo.models.config import LearnerConfig, TrainConfig
        from mmlo.models.training import train_alone
        from mmlo.tasks.config import BenchmarkConfig
        from mmlo.tasks.registry import benchmark_kind, benchmark_modes, get_benchmark

        try:
            regression = benchmark_kind(benchmark) == "regression"
            n_modes = len(benchmark_modes(benchmark))
            bench_cfg = BenchmarkConfig(
                name=benchmark,
                ways=ways,
                shots=shots or (5 if regression else 1),
                query=query or (5 if regression else 15),
                image_size=image_size,
                max_classes=max_classes,
            )
            learner_cfg = LearnerConfig(
                learner=learner,
                base=base,
                inner_lr=inner_lr or (0.001 if regression else 0.05),
                inner_steps=inner_steps,
                first_order=first_order,
                inner_grad_clip=inner_grad_clip,
                inner_grad_clamp=inner_grad_clamp,
            )
            train_cfg = TrainConfig(
                iterations=iterations,
                meta_batch=meta_batch or (25 if regression else 2) * n_modes,
                lr=lr,
                grad_clip=grad_clip,
                val_interval=val_interval,
                val_episodes=val_episodes,
                eval_episodes=eval_episodes,
                seed=seed,
                eval_seed=eval_seed,
            )
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UserError(f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}") from None
        except (ValueError, KeyError) as err:  # an unknown benchmark
            raise UserError(str(err).strip("'\"")) from None
        torch.set_num_threads(threads)
        train_alone(
            learner_cfg,
            train_cfg,
            get_benchmark(bench_cfg),
            checkpoint_dir=checkpoint_dir,
            resume_from=resume,
            device=device,
        )

    _guard(body)


@app.command()
def bench(
    case: Annotated[list[str] | None, typer.Option("--case", help="Run only these cases (repeatable).")] = None,
    iterations: Annotated[
        int, typer.Option("--iterations", min=1, help="Timed meta-iterations per round (after a warm-up).")
    ] = 2,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds", min=1, help="Interleaved rounds of learner, baseline and loop; the fastest round counts."
        ),
    ] = 3,
    threads: Annotated[
        list[int] | None,
        typer.Option("--threads", min=1, help="torch CPU threads (repeatable; default: 1 and 2)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    allocator: Annotated[
        AllocatorPolicy,
        typer.Option(
            "--allocator",
            help="auto: as studies (jemalloc for image cases, where libjemalloc2 is installed); or force one.",
        ),
    ] = AllocatorPolicy.auto,
    device: Annotated[
        BenchDevice, typer.Option("--device", help="cpu, or cuda (the first GPU torch sees) on a CUDA machine.")
    ] = BenchDevice.cpu,
) -> None:
    """Speed benchmark: seconds per meta-iteration and peak memory of each learner against the textbook
    per-task loop (image cases) and mmlo's own per-task loop, measured interleaved in one process."""

    def body() -> int:
        from mmlo.orchestrator.bench import run_bench

        return run_bench(
            case or None,
            iterations,
            as_json,
            threads=threads or (1, 2),
            allocator=allocator.value,
            device=device.value,
            rounds=rounds,
        )

    raise typer.Exit(_guard(body))


@data_app.command("list")
def data_list() -> None:
    """Benchmarks, their modes, class counts per split, and whether each is ready."""

    def body() -> None:
        from mmlo.tasks.datacmd import print_data_list

        print_data_list()

    _guard(body)


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="Benchmark name, e.g. offline4 or mm5.")],
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding the real datasets.")] = None,
    study_file: Annotated[
        Path | None, typer.Option("--study", help="Prepare exactly what this study's benchmark block needs.")
    ] = None,
) -> None:
    """Render the built-in benchmark's cache or check a real dataset's files (once, before a study)."""

    def body() -> None:
        from mmlo.tasks.datacmd import prepare

        config = _load(study_file).benchmark if study_file else None
        try:
            prepare(name, root=root, config=config)
        except (ValueError, KeyError) as err:  # an unknown benchmark or one the study does not use
            raise UserError(str(err).strip("'\"")) from None

    _guard(body)


@data_app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="Benchmark name.")],
    mode: Annotated[str, typer.Option("--mode", help="Mode to show, e.g. glyphs.")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("contact_sheet.png"),
    split: Annotated[str, typer.Option("--split", help="train | val | test.")] = "train",
    classes: Annotated[int, typer.Option("--classes", min=1, help="Classes (rows) to show.")] = 8,
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding the real datasets.")] = None,
) -> None:
    """Write a PNG contact sheet of a few classes of one mode, to look at the data."""

    def body() -> None:
        from mmlo.tasks.datacmd import show

        try:
            path = show(name, mode=mode, out=out, split=split, n_classes=classes, root=root)
        except (ValueError, KeyError) as err:  # an unknown benchmark, mode or split
            raise UserError(str(err).strip("'\"")) from None
        typer.echo(f"contact sheet: {path}")

    _guard(body)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
