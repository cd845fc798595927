"""Domain- and task-adaptive pretraining (DAPT, TAPT) with MLM and TSDAE.

corpus      the TAPT (the shop's own text) and DAPT (product text from elsewhere) corpora
models      base encoders: ids and paths, the offline MiniLM copy, a tiny RoBERTa for tests
objectives  MLM and TSDAE behind the training loop's objective interface (torch, transformers and
            sentence-transformers only: the GPU benchmark imports it alone)
head        an informed MLM head for checkpoints that ship the encoder only
schedule    a configured list of phases run in order, each scored on the valid window
"""
