"""The shape of the code a newcomer relies on: one name per stage everywhere, one error catalogue,
MLflow's tracking API behind `plmrec.tracking`."""

from __future__ import annotations

import ast
import re

import yaml
from click.testing import CliRunner

from helpers import ROOT
from plmrec import errors, stages
from plmrec.cli import main

SRC = ROOT / "src" / "plmrec"
CODE = [*SRC.rglob("*.py"), *(ROOT / "components").glob("*.py"), *(ROOT / "pipelines").glob("*.py")]


def test_every_stage_has_one_name_in_dvc_cli_kfp_and_the_functions(tmp_path):
    names = list(stages.STAGES)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == names
    for name, stage in dvc.items():
        assert stage["cmd"].startswith(f"plmrec stage {name} "), name
    cli = main.commands["stage"]
    assert sorted(cli.commands) == sorted(names)
    res = CliRunner().invoke(main, ["stage", "--help"])
    listed = re.findall(r"^  ([a-z-]+)\s", res.output.split("Commands:")[1], re.M)
    assert listed == names, res.output  # in pipeline order
    for name in names:
        assert callable(getattr(stages, name.replace("-", "_"))), name
    out = tmp_path / "pipeline.yaml"
    assert CliRunner().invoke(main, ["compile", "--params", str(ROOT / "params.yaml"), "-o", str(out)]).exit_code == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert sorted(inner) == sorted(names)
    assert all(task["taskInfo"]["name"] == name for name, task in inner.items())
    assert {task["componentRef"]["name"] for task in inner.values()} == {f"comp-{n}" for n in names}
    assert stages.FINISH_TRACKING in spec["root"]["dag"]["tasks"]


def test_the_readme_table_lists_every_stage_with_its_function():
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| `?([a-z_]+|\(KFP exit handler\))`? \|", readme, re.M)
    assert [name for name, _ in rows] == [*stages.STAGES, stages.FINISH_TRACKING]
    assert all(fn == name.replace("-", "_") for name, fn in rows[:-1])


def _classes(path):
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def test_every_exception_class_lives_in_the_errors_catalogue():
    exception_names = {
        name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    strays = []
    for path in CODE:
        if path.name == "errors.py":
            continue
        for node in _classes(path):
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if bases & (
                exception_names | {"Exception", "ValueError", "RuntimeError", "BaseException"}
            ) or node.name.endswith(("Error", "Exception")):
                strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not strays, strays


def test_each_error_knows_its_exit_code_and_http_status():
    for cls in (
        errors.ConfigError,
        errors.TrainingConfigError,
        errors.DataLoadError,
        errors.StageError,
        errors.RegistryError,
        errors.BundleError,
    ):
        assert cls.exit_code == 2 and issubclass(cls, errors.PlmrecError)
    assert errors.DataValidationFailed.exit_code == 3
    assert errors.TrainingInterrupted.exit_code == 1
    assert errors.RequestError("k").http_status == 400 and errors.RequestError("big", 413).http_status == 413
    assert errors.UnknownCustomer.http_status == 404 and errors.BundleError.http_status == 500


MLFLOW_OWNERS = {"tracking.py", "registry.py", "pyfunc.py"}  # tracking; MLflow's model API and its flavour


def test_mlflow_is_called_only_from_tracking_and_the_model_api_wrappers():
    calls = []
    for path in CODE:
        if path.name in MLFLOW_OWNERS:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (module or "").split(".")[0] == "mlflow" or any(
                    a.name.split(".")[0] == "mlflow" for a in node.names
                ):
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not calls, calls
