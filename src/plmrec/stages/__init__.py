"""The pipeline's stages, one module each, named after the stage: files in, files out, one MLflow run.

Each module holds, in this order: a docstring naming its inputs and outputs; `SPEC`, its declaration
(plmrec.stages.declaration: every input and output once, with its name, kind and DVC path); the stage
function (the name with underscores); its `plmrec stage <name>` command, derived from `SPEC`; and
`kfp`, the body of its KFP component (components/<name>.py). The two validation stages share
`validate.py`. DVC (dvc.yaml, written from the declarations), the CLI and the KFP components all run
the same stage function. `STAGES` lists the stages in pipeline order.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES = (
    "ingest",
    "validate-raw",
    "prepare",
    "validate-prepared",
    "train-baseline",
    "evaluate-baseline",
    "pretrain",
    "finetune",
    "evaluate-retrieval",
    "evaluate-search",
    "train-user-model",
    "compare-models",
    "register-model",
)
FINISH_TRACKING = "finish-tracking"  # the pipeline's exit handler (KFP only): closes the MLflow parent run
SHARED_MODULES = {"validate-raw": "validate", "validate-prepared": "validate"}  # one module, two stages


def module(name: str) -> ModuleType:
    """The module that holds stage `name`."""
    if name not in STAGES:
        from plmrec.errors import StageError

        raise StageError(f"unknown stage '{name}' (the stages: {', '.join(STAGES)})")
    return importlib.import_module(f"plmrec.stages.{SHARED_MODULES.get(name, name.replace('-', '_'))}")


def spec(name: str):
    """Stage `name`'s declaration (plmrec.stages.declaration.Stage)."""
    found = module(name)
    return found.SPECS[name.removeprefix("validate-")] if hasattr(found, "SPECS") else found.SPEC


def function(name: str):
    """Stage `name`'s function."""
    return getattr(module(name), name.replace("-", "_"))


def command(name: str):
    """Stage `name`'s `plmrec stage` command."""
    found = module(name)
    return found.COMMANDS[name] if hasattr(found, "COMMANDS") else found.command


def kfp_adapter(name: str):
    """The body of stage `name`'s KFP component."""
    return module(name).kfp


def specs() -> dict:
    """Every stage's declaration, in pipeline order."""
    return {name: spec(name) for name in STAGES}


def dvc_yaml() -> str:
    """dvc.yaml, written from the declarations (`python -m plmrec.stages > dvc.yaml`; a test keeps the
    file equal to this)."""
    import yaml

    lines = [
        "# Written by `python -m plmrec.stages > dvc.yaml` from each stage's declaration (plmrec/stages/<module>.py:",
        "# SPEC); edit the declaration, not this file. `dvc repro` reruns a stage when its inputs, params or code",
        "# (its module and the library code it declares) change, and what follows it when its outputs change.",
        "stages:",
    ]
    for name, declared in specs().items():
        if declared.comment:
            lines.append(f"  # {declared.comment}")
        body = yaml.safe_dump({name: declared.dvc()}, sort_keys=False, width=200)
        lines += ["  " + line for line in body.rstrip("\n").split("\n")]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = ["FINISH_TRACKING", "STAGES", "command", "dvc_yaml", "function", "kfp_adapter", "module", "spec", "specs"]
