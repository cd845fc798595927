"""plmrec: e-commerce recommendations improved with pretrained language models.

The library (data, pretrain, finetune, usermodel, recsys, search, serving, registry, tracking), the
pipeline's stages (`stages`, one module per stage), the cluster path (`cluster`), the command line
(`cli`); the KFP components and pipeline install as `plmrec.components` and `plmrec.pipelines`.
"""

__version__ = "0.1.0"
