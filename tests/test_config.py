import os
from pathlib import Path

import pytest

from plmrec.config import Params, apply_overrides, load_params, parse_params
from plmrec.errors import ConfigError


def test_defaults_match_params_yaml(tmp_path):
    from helpers import ROOT

    assert load_params(ROOT / "params.yaml") == Params()


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'data.sorce' \(did you mean 'data.source'\?\)"):
        parse_params({"data": {"sorce": "file"}})


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown key 'trainning'"):
        parse_params({"trainning": {}})


def test_invalid_value_names_key():
    with pytest.raises(ConfigError, match="invalid value for 'baseline.max_depth'"):
        parse_params({"baseline": {"max_depth": 0}})


def test_split_order_checked():
    with pytest.raises(ConfigError, match="valid_end .* must be after train_end"):
        parse_params({"split": {"train_end": "2011-10-01", "valid_end": "2011-09-01"}})


def test_file_source_requires_path():
    with pytest.raises(ConfigError, match="source is 'file' but path is empty"):
        parse_params({"data": {"source": "file"}})


def test_overrides_typed_and_nested():
    raw = apply_overrides({}, ["baseline.max_depth=3", "data.synthetic.n_customers=50", "clean.drop_zero_price=true"])
    p = parse_params(raw)
    assert p.baseline.max_depth == 3 and p.data.synthetic.n_customers == 50 and p.clean.drop_zero_price is True


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["baseline.max_depth"])


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_malformed_yaml(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)


def test_to_dict_round_trips():
    p = Params()
    assert parse_params(p.to_dict()) == p


def test_finetune_phases_checked():
    with pytest.raises(ConfigError, match=r"invalid value for 'finetune.phases.0.task'.*(got 'next_item')"):
        parse_params({"finetune": {"phases": [{"task": "next_item", "steps": 3}]}})
    with pytest.raises(ConfigError, match=r"'finetune.phases.1'.*give exactly one of steps or epochs"):
        parse_params({"finetune": {"phases": [{"task": "item_context", "steps": 3}, {"task": "sequence_next"}]}})
    with pytest.raises(ConfigError, match="review_item phase needs reviews_path and meta_path"):
        parse_params({"finetune": {"phases": [{"task": "review_item", "epochs": 1}]}})
    with pytest.raises(ConfigError, match=r"'finetune.merge_alphas'.*each alpha must be in \(0, 1\]; got \[0.0, 1.5\]"):
        parse_params({"finetune": {"merge_alphas": [0, 0.5, 1.5]}})
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'finetune.phases.0.step' \(did you mean "
        r"'finetune.phases.0.steps'\?\)",
    ):
        parse_params({"finetune": {"phases": [{"task": "item_context", "step": 3}]}})
    p = apply_overrides({}, ["finetune.phases=[{task: sequence_next, epochs: 0.5}]", "retrieval.ks=[5, 20]"])
    parsed = parse_params(p)
    assert parsed.finetune.phases[0].epochs == 0.5 and parsed.retrieval.ks == [5, 20]
    with pytest.raises(ConfigError, match="ks must be positive"):
        parse_params({"retrieval": {"ks": [0, 10]}})


def test_params_file_before_or_after_the_command_or_from_the_environment(tmp_path):
    import yaml
    from click.testing import CliRunner

    from plmrec.cli import PARAMS_ENV, main

    runner = CliRunner()
    clean = {PARAMS_ENV: None}  # restored after each call, whatever the group option set
    for args, env in (
        (["--params", "mine.yaml", "params", "show"], clean),
        (["params", "show", "--params", "mine.yaml"], clean),
        (["params", "show"], {PARAMS_ENV: "mine.yaml"}),
    ):
        with runner.isolated_filesystem(temp_dir=tmp_path):
            (Path.cwd() / "mine.yaml").write_text("seed: 7\n")
            result = runner.invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
        assert yaml.safe_load(result.output)["seed"] == 7, args
    result = runner.invoke(main, ["--params", str(tmp_path / "absent.yaml"), "params", "show"], env=clean)
    assert result.exit_code == 2 and "absent.yaml: params file not found" in result.output

    # given again, each file is laid over the ones before (a profile over params.yaml)
    (tmp_path / "base.yaml").write_text("seed: 7\nfinetune: {batch_size: 8, max_length: 64}\n")
    (tmp_path / "profile.yaml").write_text("finetune: {batch_size: 96}\n")
    files = ["--params", str(tmp_path / "base.yaml"), "--params", str(tmp_path / "profile.yaml")]
    for args, env in (
        ([*files, "params", "show"], clean),
        (["params", "show", *files], clean),
        (["params", "show"], {PARAMS_ENV: f"{tmp_path / 'base.yaml'}{os.pathsep}{tmp_path / 'profile.yaml'}"}),
    ):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
        shown = yaml.safe_load(result.output)
        assert (shown["seed"], shown["finetune"]["batch_size"], shown["finetune"]["max_length"]) == (7, 96, 64), args


def test_the_real_data_profile_lays_over_params_yaml():
    from helpers import ROOT

    params = load_params([ROOT / "params.yaml", ROOT / "params" / "real-data.yaml"])
    assert params.retrieval.encoder_selection == "auto" and params.finetune.start_from == "auto"
    assert params.data == load_params(ROOT / "params.yaml").data  # data stays the user's: -S data.path=...


def test_params_show_is_yaml_json_on_request_and_says_where_each_value_came_from(tmp_path):
    import json

    import yaml
    from click.testing import CliRunner

    from plmrec.cli import PARAMS_ENV, main

    runner, clean = CliRunner(), {PARAMS_ENV: None}
    (tmp_path / "base.yaml").write_text("seed: 7\nfinetune: {batch_size: 8}\n")
    (tmp_path / "profile.yaml").write_text("finetune: {batch_size: 96}\n")
    files = ["--params", str(tmp_path / "base.yaml"), "--params", str(tmp_path / "profile.yaml")]
    shown = runner.invoke(main, ["params", "show", *files, "-S", "baseline.max_depth=3"], env=clean)
    as_json = runner.invoke(main, ["params", "show", *files, "-S", "baseline.max_depth=3", "--json"], env=clean)
    assert yaml.safe_load(shown.output) == json.loads(as_json.output)
    assert yaml.safe_load(shown.output)["baseline"]["max_depth"] == 3
    origin = runner.invoke(main, ["params", "show", *files, "-S", "baseline.max_depth=3", "--origin"], env=clean)
    lines = {line.split(":")[0]: line.split("# ")[-1] for line in origin.output.splitlines()}
    assert lines["seed"] == str(tmp_path / "base.yaml")
    assert lines["finetune.batch_size"] == str(tmp_path / "profile.yaml")
    assert lines["baseline.max_depth"] == "-S baseline.max_depth=3" and lines["split.train_end"] == "default"

    bad = runner.invoke(main, ["params", "show", *files, "-S", "baseline.max_depth=abc"], env=clean)
    assert bad.exit_code == 2 and "(set by -S baseline.max_depth=abc)" in bad.output
    assert "base.yaml" not in bad.output  # the files are not blamed for an override's fault
