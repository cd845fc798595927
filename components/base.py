"""How every component is built: a KFP lightweight component in the plmrec image (`IMAGE`: the
environment's PLMREC_IMAGE, else the default; the pipeline's compile step sets params.pipeline.image),
with plmrec installed there, so no kfp package is installed at run time."""

import os

from kfp import dsl

from plmrec.config import DEFAULT_IMAGE

IMAGE = os.environ.get("PLMREC_IMAGE", DEFAULT_IMAGE)


def component(fn):
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(fn)
