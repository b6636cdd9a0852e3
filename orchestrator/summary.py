"""The one-screen summary of a study that ``mmlo validate`` prints (and ``mmlo study`` before it starts)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from mmlo.orchestrator.spec import SearchParam, Study
from mmlo.storage import join_location, shown


def local_concurrency(study: Study, cpus: float | None = None, gpus: float | None = None) -> tuple[int, str]:
    """How many trials fit at once on a cluster of ``cpus``/``gpus`` (default: this machine), and why."""
    res = study.resources
    cpus = float(os.cpu_count() or 1) if cpus is None else cpus
    fits = math.floor(cpus / res.cpus_per_trial + 1e-9)
    reason = f"{cpus:g} CPUs / {res.cpus_per_trial:g} per trial"
    if res.gpus_per_trial > 0:
        gpus = float(local_gpus()) if gpus is None else gpus
        by_gpu = math.floor(gpus / res.gpus_per_trial + 1e-9)
        reason += f", {gpus:g} GPUs / {res.gpus_per_trial:g} per trial"
        fits = min(fits, by_gpu)
    if res.max_concurrent is not None and res.max_concurrent < fits:
        fits = res.max_concurrent
        reason += f", capped by resources.max_concurrent={res.max_concurrent}"
    return fits, reason


def local_gpus() -> int:
    """CUDA devices this machine has (0 without CUDA)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def gpu_lines(study: Study) -> list[str]:
    """How GPUs are shared, in words, when trials ask for them."""
    res = study.resources
    if res.gpus_per_trial <= 0:
        return []
    share = 1.0 / res.gpus_per_trial
    sharing = (
        f"{share:g} trials share one GPU (Ray divides devices, not their memory: each trial should fit in "
        f"1/{share:g} of it)"
        if res.gpus_per_trial < 1
        else f"each trial gets {res.gpus_per_trial:g} whole GPU(s)"
    )
    return [
        f"  gpus       {res.gpus_per_trial:g} per trial: {sharing}; Ray sets CUDA_VISIBLE_DEVICES for each trial",
        f"             a node with C CPUs and G GPUs runs min(C / {res.cpus_per_trial:g}, G / {res.gpus_per_trial:g}) "
        "trials at once; a cluster runs the sum over its nodes",
    ]


def _describe_param(name: str, p: SearchParam) -> str:
    if p.type == "categorical":
        text = f"{name}: one of {p.choices}"
    else:
        scale = ", log" if p.log else ""
        step = f", step {p.step:g}" if p.step else ""
        text = f"{name}: {p.type} in [{p.low:g}, {p.high:g}]{scale}{step}"
    if p.when:
        text += "  when " + ", ".join(f"{k}={v}" for k, v in p.when.items())
    return text


def summarize(study: Study, file: Path | str) -> str:
    """A plain-text summary: what will run, how big, and how many trials at once."""
    b, budget = study.benchmark, study.budget
    modes = ", ".join(b.modes) if b.modes else "all modes"
    lines = [
        f"study {study.name}  ({file}: valid)",
        f"  benchmark  {b.name} [{modes}]  {b.ways}-way {b.shots}-shot, {b.query} query, {b.image_size}px",
        f"  budget     {budget.iterations} iterations, validate every {budget.val_interval} "
        f"({budget.val_episodes} episodes/mode), test {budget.eval_episodes} episodes/mode",
        f"  seeds      {study.seeds}   phases: {', '.join(study.resolved_phases)}",
        f"  output     {shown(join_location(study.output, study.name))}",
    ]
    if study.arms:
        lines.append(f"  arms ({len(study.arms)}), baseline {study.baseline_arm}:")
        width = max(len(a.name) for a in study.arms)
        for arm in study.arms:
            cfg = study.learner_config(arm)
            train = study.train_config(arm, study.seeds[0])
            detail = f"{cfg.learner:<14} modulation={cfg.resolved_modulation}"
            if cfg.resolved_modulation == "kml":
                detail += f" ({cfg.kml_variant}, rank {cfg.kml_rank})"
            if cfg.base_algorithm == "maml":
                detail += f" inner_lr={cfg.inner_lr:g} x{cfg.inner_steps}"
            detail += f" lr={train.lr:g}"
            if train.lr_decay_every is not None:
                detail += f" (x{train.lr_decay_factor:g} every {train.lr_decay_every})"
            if train.iterations != budget.iterations:
                detail += f" iterations={train.iterations}"
            lines.append(f"    {arm.name:<{width}}  {detail}")
    if study.search is not None:
        from mmlo.orchestrator.plan import search_base, search_iterations
        from mmlo.orchestrator.search import base_point, rung_iterations

        s = study.search
        objective = f"multi-objective TPE (metric, {s.cost})" if s.cost else "TPE"
        lines.append(
            f"  search     {s.trials} Optuna {objective} trials of {search_iterations(study)} iterations "
            f"(sampler seed {s.sampler_seed}), from arm {search_base(study) or '-'}"
        )
        if s.start_from_base:
            point, why_not = base_point(study)
            lines.append(
                "    first trial: the base arm's own configuration"
                if point is not None
                else f"    first trial: sampled ({why_not})"
            )
        rungs = rung_iterations(study)
        if study.scheduler.type == "asha":
            judged = ", ".join(str(r) for r in rungs) or "none below the full budget"
            lines.append(
                f"    scheduler asha: judged at iteration {judged}, the best 1/{study.scheduler.reduction_factor:g} "
                "continue"
            )
        else:
            lines.append("    scheduler none: every search trial runs its full budget")
        lines.extend(f"    {_describe_param(n, p)}" for n, p in s.space.items())
    if study.confirm is not None:
        lines.append(f"  confirm    top {study.confirm.top_k} x {len(study.seeds)} seeds")
    if study.transference is not None:
        t = study.transference
        lines.append(
            f"  transference  {t.sources_per_mode} sources x {t.targets_per_mode} targets per mode "
            f"({t.source_split} -> {t.target_split})"
        )
    fits, reason = local_concurrency(study)
    lines.extend(gpu_lines(study))
    lines.append(f"  trials     {study.trial_count()} in all; {fits} at once on this machine ({reason})")
    if study.resources.memory_limit_mb is not None:
        lines.append(
            f"  memory     at most {study.resources.memory_limit_mb} MiB per trial (resources.memory_limit_mb)"
        )
    if fits == 0:
        lines.append(
            "  warning    no trial fits on this machine: lower resources.cpus_per_trial/gpus_per_trial "
            "or run with --address on a cluster that has them"
        )
    return "\n".join(lines)
