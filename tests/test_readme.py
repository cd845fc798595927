"""The README's commands, as written: each command block is read out of README.md, so an example cannot
drift from the code. What does not train runs for real (`plmrec data inspect`, `plmrec params show`, the
curl examples against a real model server); what trains or needs a registry's history (`make run`,
`plmrec run`, `plmrec promote`, a benchmark) is parsed by the very CLI that would run it: every option
and every `-S key=value` must be one the code takes, every file it names must exist."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import requests

from helpers import ROOT, SHARED_DATA

README = ROOT / "README.md"
RUN_FOR_REAL = {("plmrec", "data"), ("plmrec", "params")}  # fast, no training, no registry needed


def readme_commands() -> list[list[str]]:
    """Every command line of the README's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        pending = ""
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on on the next line
                continue
            if words:
                commands.append(words)
            pending = ""
    return commands


COMMANDS = readme_commands()


def _ids(commands):
    return [" ".join(c)[:60] for c in commands]


def test_the_readme_has_commands_and_each_program_is_one_this_test_knows():
    programs = {c[0] for c in COMMANDS}
    assert len(COMMANDS) >= 10 and programs <= {"make", "plmrec", "python", "curl"}, programs


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] == "make"], ids=_ids)
def test_make_targets_exist(command):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    assert set(command[1:]) <= targets


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The click command a `plmrec ...` line reaches and the arguments left for it."""
    from plmrec.cli import main

    command, rest = main, list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def _dvc_outputs() -> set[str]:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {next(iter(o)) if isinstance(o, dict) else o for s in stages.values() for o in s.get("outs", [])}


def _shared_paths(args: list[str]) -> list[Path]:
    found = []
    for arg in args:
        value = arg.split("=", 1)[-1]
        if value.startswith("../shared/"):
            found.append(ROOT / value)
    return found


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] == "plmrec"], ids=_ids)
def test_each_plmrec_command_parses_and_its_params_validate(command):
    """Options the command takes, overrides that name real keys with valid values, files that exist."""
    from plmrec.config import load_params

    target, rest = _resolve(command[1:])
    assert not isinstance(target, click.Group), f"{command}: names a group, not a command"
    try:
        ctx = target.make_context(command[1], rest)  # raises click.UsageError on an unknown option
    except click.BadParameter as exc:  # a folder `dvc repro` makes (the README says so) is not there yet
        assert any(f"'{out}'" in str(exc) for out in _dvc_outputs()), exc
        return
    params = ctx.params
    if "overrides" in params or "params_path" in params:
        load_params(params.get("params_path") or None, params.get("overrides") or ())
    for path in _shared_paths(command):
        if not SHARED_DATA.exists():
            pytest.skip("../shared/data not present")
        assert path.exists(), f"{' '.join(command)}: {path} does not exist"


@pytest.mark.parametrize("command", [c for c in COMMANDS if tuple(c[:2]) in RUN_FOR_REAL], ids=_ids)
def test_the_commands_that_do_not_train_run_as_written(command):
    for path in _shared_paths(command):
        if not path.exists():
            pytest.skip(f"{path} not present")
    out = subprocess.run(
        [sys.executable, "-m", "plmrec.cli", *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() and "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] == "python"], ids=_ids)
def test_each_benchmark_command_names_a_script_and_flags_it_takes(command):
    script = ROOT / command[1]
    assert script.is_file(), command
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0, usage.stderr[-2000:]
    for flag in (a for a in command[2:] if a.startswith("--")):
        assert flag in usage.stdout, f"{script.name} takes no {flag}"


def test_the_serving_examples_name_ids_the_synthetic_default_has():
    """The curl examples' customer and stock codes are in the data `make run` trains on."""
    from plmrec.config import SyntheticParams
    from plmrec.data.synthetic import generate_transactions

    data = generate_transactions(SyntheticParams())
    text = README.read_text()
    customers = {int(c) for c in re.findall(r'"customer_id": (\d+)', text)}
    customers |= {int(c) for c in re.findall(r'"data": \[(\d+), (\d+)\]', text)[0]}
    codes = set(re.findall(r'"basket": \["(\w+)", "(\w+)"\]', text)[0])
    assert customers <= set(data["CustomerID"].dropna().astype(int)), customers
    assert codes <= set(data["StockCode"].astype(str)), codes


@pytest.fixture(scope="module")
def readme_server(serving_bundles, tmp_path_factory):
    from helpers import plmrec_server

    with plmrec_server(["--bundle", str(serving_bundles["ltr"])], tmp_path_factory.mktemp("readme")) as server:
        yield server


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] == "curl"], ids=_ids)
def test_the_curl_examples_get_answers_from_a_real_model_server(command, readme_server):
    """Each curl line, posted as written (but to this test's port) to `plmrec serve`: a 200 with answers."""
    url = next(a for a in command if a.startswith("localhost:"))
    body = command[command.index("-d") + 1]
    headers = {"content-type": "application/json"}
    answer = requests.post(f"{readme_server.url}/{url.split('/', 1)[1]}", data=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body.get("predictions") or body.get("outputs"), body
