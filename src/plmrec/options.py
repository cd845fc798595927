"""The command-line options every plmrec command shares: the params files and `-S key=value` overrides."""

from __future__ import annotations

import click

PARAMS_ENV = "PLMREC_PARAMS"
params_option = click.option(
    "--params",
    "params_path",
    type=click.Path(dir_okay=False),
    multiple=True,
    envvar=PARAMS_ENV,
    show_envvar=True,
    help="params file (default: ./params.yaml, or built-in defaults if absent); given again, each later file is "
    "laid over the ones before, e.g. --params params.yaml --params params/real-data.yaml",
)
set_option = click.option(
    "-S",
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a parameter, e.g. -S data.source=file -S data.path=retail.xlsx",
)
