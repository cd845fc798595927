"""Domain- and task-adaptive pretraining (DAPT, TAPT) with MLM and TSDAE.

`trainer` and `objectives` need only torch, transformers and sentence-transformers (the GPU
benchmark imports them alone); `schedule` runs a configured list of phases.
"""
