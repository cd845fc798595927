"""Contrastive fine-tuning of the sentence encoder and what is measured with it.

pairs        the training pairs of each task (review/item, item context, history/next item, ...)
contrastive  in-batch InfoNCE (MNRL) behind the training loop's objective interface
schedule     the fine-tuning phases in order, the merge with the start, the embedding outputs
merge        WiSE-FT weight-space merging, the weight chosen on the valid window
embed        item and user embeddings, nearest-neighbour search over items
retrieval    next-item retrieval with full ranking (the evaluate-retrieval tables)
"""
