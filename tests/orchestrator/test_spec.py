"""The study spec: valid studies load; every kind of bad input gives one SpecError naming key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmlo.orchestrator.spec import SpecError, Study, json_schema, load_studies, load_study, parse_study

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = "name: t\nbenchmark: {name: regression2, shots: 5, query: 5}\narms:\n  - {name: MAML, learner: maml}\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_study(_write(tmp_path, text))
    return info.value


@pytest.mark.parametrize(
    "name",
    [
        "smoke.yaml",
        "kml_ablation.yaml",
        "regression.yaml",
        "paper_regression.yaml",
        "paper_mm2.yaml",
        "paper_mm3.yaml",
        "paper_mm5.yaml",
    ],
)
def test_shipped_studies_are_valid(name: str) -> None:
    # every study shipped in studies/ loads without error
    path = ROOT / "studies" / name
    assert all(isinstance(s, Study) for s in load_studies(path))


def test_arm_inherits_study_defaults_and_overrides(tmp_path: Path) -> None:
    # an arm's config = model defaults, then the arm's own keys; train overrides apply to that arm only
    study = load_study(
        _write(
            tmp_path,
            MINIMAL
            + "  - {name: KML, learner: kml, base: maml, kml_rank: 3, train: {lr: 0.01}}\n"
            + "model: {inner_lr: 0.001, hidden: [40, 40]}\ntrain: {meta_batch: 4, lr: 0.002}\nseeds: [3, 4]\n",
        )
    )
    maml, kml = study.arms
    assert study.learner_config(maml).inner_lr == 0.001
    assert study.learner_config(kml).hidden == [40, 40]
    assert study.learner_config(kml).kml_rank == 3
    assert study.learner_config(kml).base_algorithm == "maml"
    assert study.train_config(maml, 3).lr == 0.002
    assert study.train_config(kml, 4).lr == 0.01
    assert study.train_config(kml, 4).seed == 4
    assert study.trial_count() == 4


def test_search_trial_count_and_phases(tmp_path: Path) -> None:
    # phases default to what is declared; confirm adds top_k x seeds trials
    text = MINIMAL + (
        "seeds: [0, 1]\nsearch:\n  trials: 5\n  space:\n    inner_lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
        "confirm: {top_k: 2}\n"
    )
    study = load_study(_write(tmp_path, text))
    assert study.resolved_phases == ["ablation", "search", "confirm"]
    assert study.trial_count() == 2 + 5 + 4


def test_paths_are_absolute_and_user_expanded(tmp_path: Path) -> None:
    # relative and ~ paths become absolute when the study is loaded
    study = load_study(_write(tmp_path, MINIMAL + "output: ~/mmlo-runs\n"))
    assert study.output == str(Path.home() / "mmlo-runs")
    mm2 = MINIMAL.replace("{name: regression2, shots: 5, query: 5}", "{name: mm2, root: data}")
    study = load_study(_write(tmp_path, mm2 + "output: runs\n"))
    assert Path(study.output).is_absolute() and study.benchmark.root is not None and study.benchmark.root.is_absolute()


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    # a YAML syntax error reports the file and the line
    err = _error(tmp_path, "name: t\narms: [\n  {name: a\nseeds: [0]\n")
    assert "YAML syntax error" in str(err) and err.line is not None and str(tmp_path) in str(err)


def test_unknown_key_names_key_path_and_line(tmp_path: Path) -> None:
    # a typo is an error at its key path and line, never silently ignored
    err = _error(tmp_path, MINIMAL + "  - {name: K, learner: kml, kml_rnk: 2}\n")
    assert err.key == "arms.1.kml_rnk" and err.line == 5 and "unknown key" in str(err)


def test_wrong_type(tmp_path: Path) -> None:
    # a value of the wrong type names the key and echoes the value
    err = _error(tmp_path, MINIMAL + "seeds: three\n")
    assert err.key == "seeds" and "'three'" in str(err) and err.line == 5


def test_out_of_range_value(tmp_path: Path) -> None:
    # a value outside its limits names the key
    err = _error(tmp_path, MINIMAL.replace("shots: 5", "shots: 0"))
    assert err.key == "benchmark.shots" and "greater than or equal to 1" in str(err)


def test_negative_budget(tmp_path: Path) -> None:
    # a negative budget is refused at budget.iterations
    err = _error(tmp_path, MINIMAL + "budget: {iterations: -10}\n")
    assert err.key == "budget.iterations" and err.line == 5


def test_missing_file(tmp_path: Path) -> None:
    # a missing study file is named, with a hint
    with pytest.raises(SpecError, match="no such file"):
        load_study(tmp_path / "nope.yaml")


def test_empty_file(tmp_path: Path) -> None:
    # an empty file says so instead of failing on None
    err = _error(tmp_path, "# nothing here\n")
    assert "empty" in str(err)


def test_condition_on_unknown_parameter(tmp_path: Path) -> None:
    # a search condition naming a parameter that is not in the space is refused at its key path
    text = MINIMAL + (
        "search:\n  trials: 2\n  space:\n"
        "    kml_rank: {type: int, low: 1, high: 4, when: {modulatoin: kml}}\n"
    )
    err = _error(tmp_path, text)
    assert err.key == "search.space.kml_rank.when" and "modulatoin" in str(err) and err.line == 8


def test_condition_on_later_parameter(tmp_path: Path) -> None:
    # define-by-run: a condition may only use parameters declared before it
    text = MINIMAL + (
        "search:\n  trials: 2\n  space:\n"
        "    kml_rank: {type: int, low: 1, high: 4, when: {modulation: kml}}\n"
        "    modulation: {type: categorical, choices: [film, kml]}\n"
    )
    assert "declared before" in str(_error(tmp_path, text))


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("{type: float, low: 0.5, high: 0.1}", "greater than high"),
        ("{type: float, low: 0, high: 0.1, log: true}", "low > 0"),
        ("{type: categorical}", "choices"),
        ("{type: int, low: 1.5, high: 4}", "integer"),
        ("{type: float, high: 0.1}", "both 'low' and 'high'"),
    ],
)
def test_bad_search_parameter(tmp_path: Path, param: str, message: str) -> None:
    # malformed search dimensions are refused at search.space.<name>
    err = _error(tmp_path, MINIMAL + f"search:\n  trials: 2\n  space:\n    inner_lr: {param}\n")
    assert err.key == "search.space.inner_lr" and message in str(err)


def test_unknown_search_parameter(tmp_path: Path) -> None:
    # only learner and training fields can be searched
    err = _error(
        tmp_path, MINIMAL + "search:\n  trials: 2\n  space:\n    inner_lrr: {type: float, low: 0.1, high: 1}\n"
    )
    assert "unknown parameter 'inner_lrr'" in str(err)


def test_inconsistent_arm(tmp_path: Path) -> None:
    # an arm whose merged config is inconsistent names the arm
    err = _error(tmp_path, MINIMAL + "  - {name: P, learner: protonet, base: maml}\n")
    assert err.key is not None and err.key.startswith("arms") and "'base' only applies" in str(err)


def test_meta_batch_must_split_evenly_over_modes(tmp_path: Path) -> None:
    # tasks are drawn in equal shares per mode, so meta_batch must be a multiple of the mode count
    err = _error(tmp_path, MINIMAL + "train: {meta_batch: 5}\n")
    assert "multiple of the 2 modes" in str(err)


def test_duplicate_arm_names(tmp_path: Path) -> None:
    # arm names identify rows of the ablation table, so they must be unique
    assert "duplicate arm names" in str(_error(tmp_path, MINIMAL + "  - {name: MAML, learner: mmaml}\n"))


def test_parse_rejects_non_mapping() -> None:
    # a YAML list at top level is not a study
    with pytest.raises(SpecError, match="mapping"):
        parse_study([1, 2])


def test_json_schema_is_valid_and_documented() -> None:
    # the schema is JSON Schema with a description on every property of the study and its arms
    schema = json_schema()
    assert schema["type"] == "object" and "arms" in schema["properties"]
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        assert prop.get("description") or schema["$defs"].get(ref, {}).get("description"), name
    arm = schema["$defs"]["Arm"]["properties"]
    assert all(p.get("description") for p in arm.values())
    assert schema["additionalProperties"] is False


def test_fingerprint_ignores_output_but_not_science(tmp_path: Path) -> None:
    # moving the output folder keeps the study's identity; changing a learner setting changes it
    a = load_study(_write(tmp_path, MINIMAL + "output: a\n"))
    b = load_study(_write(tmp_path, MINIMAL + "output: b\n"))
    c = load_study(_write(tmp_path, MINIMAL + "model: {inner_lr: 0.2}\n"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_multi_document_file(tmp_path: Path) -> None:
    # a file may hold several studies as YAML documents; each is validated with its own line numbers
    second = MINIMAL.replace("name: t", "name: u").replace("regression2", "regression3")
    two = MINIMAL + "---\n" + second + "train: {meta_batch: 6}\n"
    studies = load_studies(_write(tmp_path, two))
    assert [s.name for s in studies] == ["t", "u"]
    bad = MINIMAL + "---\n" + MINIMAL.replace("name: t", "name: u") + "budget: {iterations: 0}\n"
    with pytest.raises(SpecError) as info:
        load_studies(_write(tmp_path, bad))
    assert info.value.key == "budget.iterations" and info.value.line == 10
    with pytest.raises(SpecError, match="distinct study names"):
        load_studies(_write(tmp_path, MINIMAL + "---\n" + MINIMAL))


def test_utf8_bom_and_windows_line_endings_load(tmp_path: Path) -> None:
    # a study saved by a Windows editor (UTF-8 byte-order mark, CRLF line ends) is a valid study
    path = tmp_path / "study.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.replace("\n", "\r\n").encode())
    assert load_study(path).name == "t"


def test_small_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    # the anchors people really write (an arm merged into another, a shared list) load as before
    text = (
        "name: t\nbenchmark: {name: regression2, shots: 5, query: 5}\narms:\n"
        "  - &base {name: MAML, learner: maml, inner_lr: 0.01, hidden: &widths [40, 40]}\n"
        "  - <<: *base\n    name: MAML-lr\n    train: {lr: 0.01}\n"
        "model: {channels: *widths}\n"
    )
    study = load_study(_write(tmp_path, text))
    assert [a.name for a in study.arms] == ["MAML", "MAML-lr"]
    assert study.learner_config(study.arms[1]).inner_lr == 0.01
    assert study.learner_config(study.arms[1]).hidden == [40, 40] == study.model.channels


def test_alias_bomb_is_refused_at_its_line(tmp_path: Path) -> None:
    # nested aliases are counted at their expanded size before anything expands them
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    err = _error(tmp_path, "name: t\n" + "\n".join(lines) + "\n")
    assert err.line == 6 and err.key == "e.5" and "alias *d" in str(err)


def test_budgets_leave_room_for_large_real_studies(tmp_path: Path) -> None:
    # a study far larger than any real one (200 arms, a 1000-choice categorical) is within every budget
    arms = "".join(f"  - {{name: arm{i}, learner: maml, inner_lr: 0.0{i % 9 + 1}}}\n" for i in range(200))
    choices = ", ".join(str(i) for i in range(1, 1001))
    text = MINIMAL.split("arms:")[0] + "arms:\n" + arms + (
        f"search:\n  trials: 3\n  space:\n    inner_steps: {{type: categorical, choices: [{choices}]}}\n"
    )
    assert len(load_study(_write(tmp_path, text)).arms) == 200


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("train: {lr: .inf}", "train.lr"),
        ("train: {lr: 'inf'}", "train.lr"),
        ("model: {inner_lr: .nan}", "model.inner_lr"),
        ("model: {inner_grad_clip: -.inf}", "model.inner_grad_clip"),
        ("  - {name: B, learner: maml, inner_lr: .NaN}", "arms.1.inner_lr"),
        ("  - {name: B, learner: maml, train: {lr_decay_factor: .inf}}", "arms.1.train.lr_decay_factor"),
        ("search: {trials: 2, space: {lr: {type: float, low: -.inf, high: 0.1}}}", "search.space.lr.low"),
        ("search: {trials: 2, space: {lr: {type: float, low: 0.1, high: 0.2, step: .nan}}}", "search.space.lr.step"),
        ("search: {trials: 2, space: {lr: {type: categorical, choices: [0.1, .inf]}}}", "search.space.lr.choices.1"),
        ("scheduler: {reduction_factor: .inf}", "scheduler.reduction_factor"),
        ("resources: {cpus_per_trial: .inf}", "resources.cpus_per_trial"),
        ("transference: {neutral_band: .nan}", "transference.neutral_band"),
        ("model: {inner_lr: 1.0e+999}", "model.inner_lr"),
    ],
)
def test_non_finite_numbers_are_refused_everywhere(tmp_path: Path, line: str, key: str) -> None:
    # every float of the spec, nested or overridden, must be finite; the error names key path and line
    err = _error(tmp_path, MINIMAL + line + "\n")
    assert err.key == key and err.line == 5 and "finite number" in str(err)


def test_duplicate_keys_are_refused_but_merged_keys_may_be_overridden(tmp_path: Path) -> None:
    # YAML keeps the last of two equal keys silently, so a duplicate is an error at its second line
    err = _error(tmp_path, MINIMAL + "train: {lr: 0.01}\ntrain: {lr: 0.02}\n")
    assert err.key == "train" and err.line == 6 and "also on line 5" in str(err)


def test_message_escapes_control_characters(tmp_path: Path) -> None:
    # text from the file is escaped in the one-line message, so it cannot drive the terminal
    err = _error(tmp_path, MINIMAL + '"\\e[2J\\ncleared": 1\n')
    assert "\x1b" not in str(err) and "\n" not in str(err) and "\\x1b[2J\\ncleared" in str(err)


def test_oversized_and_undecodable_files(tmp_path: Path) -> None:
    # a file over the size limit, or not UTF-8, is refused before any parsing, with a hint
    path = tmp_path / "study.yaml"
    path.write_bytes(b"# " + b"x" * 300_000)
    with pytest.raises(SpecError, match="larger than 256 KiB"):
        load_study(path)
    path.write_bytes(MINIMAL.encode() + b"description: \xff\n")
    with pytest.raises(SpecError, match="not UTF-8") as info:
        load_study(path)
    assert info.value.line == 5
