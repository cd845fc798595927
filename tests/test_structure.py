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
    res = CliRunner().invoke(main, ["stage", "--help"])
    listed = re.findall(r"^  ([a-z-]+)\s", res.output.split("Commands:")[1], re.M)
    assert listed == names, res.output  # in pipeline order
    out = tmp_path / "pipeline.yaml"
    assert CliRunner().invoke(main, ["compile", "--params", str(ROOT / "params.yaml"), "-o", str(out)]).exit_code == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert sorted(inner) == sorted(names)
    assert all(task["taskInfo"]["name"] == name for name, task in inner.items())
    assert {task["componentRef"]["name"] for task in inner.values()} == {f"comp-{n}" for n in names}
    assert stages.FINISH_TRACKING in spec["root"]["dag"]["tasks"]


def test_each_stage_lives_in_its_module_with_function_command_and_kfp_adapter():
    for name in stages.STAGES:
        module = stages.module(name)
        path = SRC / "stages" / f"{module.__name__.rsplit('.', 1)[1]}.py"
        shared = stages.SHARED_MODULES.get(name)
        assert path.name == f"{shared or name.replace('-', '_')}.py", name
        function = getattr(module, name.replace("-", "_"))
        assert callable(function) and stages.function(name) is function
        assert stages.command(name).name == name and callable(module.kfp)
        assert stages.spec(name).name == name and stages.spec(name).module_file == str(path.relative_to(ROOT))
        assert (ROOT / "components" / f"{name.replace('-', '_')}.py").is_file(), name  # one component file each
    for path in (SRC / "stages").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, f"{path.name} is over 400 lines: split it"
    assert "def stage_" not in (SRC / "cli.py").read_text()  # the commands come from the stage modules


def test_dvc_yaml_is_what_the_declarations_say_and_names_each_stage_module():
    assert (ROOT / "dvc.yaml").read_text() == stages.dvc_yaml(), "regenerate: python -m plmrec.stages > dvc.yaml"
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in dvc.items():
        assert stages.spec(name).module_file in stage["deps"], name
        for port in stages.spec(name).inputs:
            if port.path:
                assert port.path in stage["deps"], (name, port.name)


def test_each_kfp_component_signature_is_its_stage_declaration():
    import inspect

    from kfp import dsl

    from plmrec import components

    for name in stages.STAGES:
        declared = stages.spec(name)
        component = getattr(components, name.replace("-", "_"))
        wanted = {
            p.name: getattr(dsl, "Input" if p in declared.inputs else "Output")[getattr(dsl, p.kfp_type)]
            for p in declared.ports
            if p.in_kfp
        }
        parameters = inspect.signature(component.python_func).parameters
        assert list(parameters) == ["config", "tracking_uri", "run_key", "job_id", *wanted], name
        assert {p: parameters[p].annotation for p in wanted} == wanted, name
        assert component.name == name
        adapter = inspect.signature(stages.kfp_adapter(name)).parameters
        if stages.SHARED_MODULES.get(name) is None:
            assert [p for p in adapter if p not in ("config", "tracking_uri", "run_key")] == list(wanted), name


def test_each_stage_command_has_one_option_per_declared_file_port():
    for name in stages.STAGES:
        declared = stages.spec(name)
        options = {o for p in stages.command(name).params for o in p.opts if o.startswith("--")}
        wanted = {p.option for p in declared.ports if p.on_cli}
        assert options == wanted | {"--params", "--set", "--result"}, name


def test_the_readme_table_lists_every_stage_with_its_function_and_ports():
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(
        r"^\| `([a-z-]+)` \| (?:`([a-z_]+)`, ([a-z_]+)\.py|\(KFP exit handler\)) \|[^|]*\|([^|]*)\|([^|]*)\|$",
        readme,
        re.M,
    )
    assert [name for name, *_ in rows] == [*stages.STAGES, stages.FINISH_TRACKING]
    for name, fn, module, inputs, outputs in rows[:-1]:
        declared = stages.spec(name)
        assert fn == name.replace("-", "_") and declared.module.endswith(f".{module}"), name
        assert re.findall(r"`([a-z_]+)`", inputs) == [p.name for p in declared.inputs], name
        assert re.findall(r"`([a-z_]+)`", outputs) == [p.name for p in declared.outputs], name
        for port in declared.ports:
            if port.path:
                assert f"`{port.name}` ({port.path})" in inputs + outputs, (name, port.name)


def test_trainjob_stages_are_the_declared_distributed_ones():
    from plmrec.cluster.trainjob import DISTRIBUTED_STAGES

    declared = {name: stages.spec(name).distributed for name in stages.STAGES if stages.spec(name).distributed}
    assert declared == DISTRIBUTED_STAGES


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
    assert errors.BundleError.http_status == 500


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
