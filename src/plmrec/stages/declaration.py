"""A stage's inputs and outputs, declared once; its `plmrec stage` command, its DVC stage and the
paths its KFP adapter hands over are derived from that declaration.

Each artifact has one name from end to end: the CLI option (`--user-model`), the stage function's
keyword (`user_model`), the KFP input or output (`user_model`) and, where DVC tracks it, one path
(`models/user_model`). An artifact is declared by the stage that writes it; the stages that read it
import that declaration (`ENCODER.reading(...)`), so name, kind and path cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

# kind -> (a folder?, the KFP artifact type, where it goes: cli and/or kfp)
KINDS = {
    "table": (False, "Dataset", "cli kfp"),  # a parquet table
    "model": (True, "Model", "cli kfp"),  # a model folder
    "folder": (True, "Artifact", "cli kfp"),  # a folder of reports
    "metrics": (False, "Metrics", "cli kfp"),  # the stage's figures: a JSON file for DVC; KFP Metrics
    "plots": (True, None, "cli"),  # a folder of pictures DVC shows as plots
    "html": (False, "HTML", "kfp"),  # the page the KFP UI shows for the step
    "confusion": (False, "ClassificationMetrics", "kfp"),  # a confusion matrix the KFP UI draws
}
SOURCE = "src/plmrec/stages"


@dataclass(frozen=True)
class Port:
    """One input or output of a stage. `path`: where DVC keeps it (None: not a DVC file); `files`: for a
    folder, the DVC outputs inside it (else the folder is one output), for plots the pictures;
    `curves`: for plots, data files DVC draws and overlays across experiments, (file, x, y) each;
    `metrics_file`: a folder's JSON that DVC reads as metrics."""

    name: str
    kind: str
    help: str
    path: str | None = None
    required: bool = True
    files: tuple[str, ...] = ()
    curves: tuple[tuple[str, str, str], ...] = ()
    metrics_file: str | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"port {self.name}: unknown kind '{self.kind}' (expected one of {', '.join(KINDS)})")

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_dir(self) -> bool:
        return KINDS[self.kind][0]

    @property
    def kfp_type(self) -> str | None:
        return KINDS[self.kind][1]

    @property
    def on_cli(self) -> bool:
        return "cli" in KINDS[self.kind][2]

    @property
    def in_kfp(self) -> bool:
        return "kfp" in KINDS[self.kind][2]

    def reading(self, help: str | None = None, *, required: bool = True) -> Port:
        """The same artifact as another stage's input."""
        return dataclasses.replace(self, help=help or self.help, required=required)


@dataclass(frozen=True)
class Stage:
    """A stage's declaration: its name, inputs and outputs, the params sections it reads, the library
    code it runs (DVC deps besides its own module), files that must exist first, and the params section
    whose `resources.distributed` can make it a Kubeflow Trainer job."""

    name: str
    module: str
    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()
    params: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    distributed: str | None = None
    comment: str = ""
    resumes: str = ""  # what a rerun after a kill reuses ("" : nothing, it runs again from the start)

    @property
    def function_name(self) -> str:
        return self.name.replace("-", "_")

    @property
    def ports(self) -> tuple[Port, ...]:
        return (*self.inputs, *self.outputs)

    def port(self, name: str) -> Port:
        return next(p for p in self.ports if p.name == name)

    @property
    def module_file(self) -> str:
        return f"{SOURCE}/{self.module.rsplit('.', 1)[-1]}.py"

    # -- the command line ----------------------------------------------------------------------
    def kept_on_kill(self) -> str:
        """What a kill of `plmrec stage <name>` leaves, and how to go on (one clause of the last line)."""
        if self.resumes:
            return f"kept: {self.resumes}; rerun the same command to resume from there"
        return "nothing half-done is kept (its outputs are written at the end); rerun the same command"

    def command(self, fn: Callable, help: str) -> click.Command:
        """`plmrec stage <name>`: --params, -S, one option per port that lives on files, and --result (the
        stage's whole report as JSON, what a Kubeflow Trainer job hands back)."""
        from plmrec.options import params_option, set_option

        def callback(params_path, overrides, result, **ports):
            from plmrec.config import load_params
            from plmrec.interrupts import stopped_by_signal

            with stopped_by_signal(f"stage {self.name}", kept=self.kept_on_kill()):
                report = fn(load_params(params_path, overrides), **ports)
            if result:
                write_json(result, report)

        decorated = click.option(
            "--result", type=click.Path(dir_okay=False), default=None, help="write the stage's report here (JSON)"
        )(callback)
        for port in reversed([p for p in self.ports if p.on_cli]):
            reads = port in self.inputs
            kind = click.Path(file_okay=not port.is_dir, dir_okay=port.is_dir, exists=reads)
            decorated = click.option(
                port.option, port.name, type=kind, required=port.required, default=None, help=port.help
            )(decorated)
        return click.command(self.name, help=help)(params_option(set_option(decorated)))

    # -- DVC ---------------------------------------------------------------------------------------
    def dvc(self) -> dict:
        """The stage as dvc.yaml holds it."""
        tracked = [p for p in self.ports if p.on_cli and p.path]
        cmd = " ".join([f"plmrec stage {self.name} --params params.yaml", *(f"{p.option} {p.path}" for p in tracked)])
        deps = [*(p.path for p in self.inputs if p.path), *self.after]
        deps += [self.module_file, f"{SOURCE}/common.py", f"{SOURCE}/declaration.py", *self.code]
        outs, metrics, plots = [], [], []
        for p in self.outputs:
            if not p.path:
                continue
            if p.kind == "metrics":
                metrics.append({p.path: {"cache": False}})
            elif p.kind == "plots":
                plots += [{f"{p.path}/{name}": {"cache": False}} for name in p.files]
                plots += [{f"{p.path}/{name}": {"x": x, "y": y, "cache": False}} for name, x, y in p.curves]
            else:
                for path in [f"{p.path}/{name}" for name in p.files] or [p.path]:
                    outs.append(path if p.cache else {path: {"cache": False}})
                if p.metrics_file:
                    metrics.append({f"{p.path}/{p.metrics_file}": {"cache": False}})
        stage = {"cmd": cmd, "deps": deps}
        if self.params:
            stage["params"] = list(self.params)
        for key, value in (("outs", outs), ("metrics", metrics), ("plots", plots)):
            if value:
                stage[key] = value
        return stage

    # -- KFP ---------------------------------------------------------------------------------------
    def kfp_paths(self, artifacts: dict) -> dict[str, str | None]:
        """The stage function's keywords from the KFP artifacts (by port name): each artifact's path;
        ports KFP does not carry (plots) get None."""
        return {p.name: (artifacts[p.name].path if p.name in artifacts else None) for p in self.ports if p.on_cli}


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    """A stage's JSON output (metrics, decisions, its report), its folder created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=indent, default=str), encoding="utf-8")


def flat_figures(obj, prefix: str = "") -> dict[str, float]:
    """Every number in a nested JSON-able object, keyed by its path (`a_b_ndcg_at_10`): a KFP Metrics
    artifact's entries."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}_{key}" if prefix else str(key)
            out.update(flat_figures(value, name.replace("@", "_at_")))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out
