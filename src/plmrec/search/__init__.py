"""Complex product search (BLaIR's second task, the Amazon-C4 protocol): a long natural-language
request must retrieve the one item it describes.

  datasets   Amazon-C4 and ESCI loaders, and their download code (Hugging Face / GitHub)
  benchmark  a C4-style benchmark from review data with item text, split by time
  lexical    BM25 (bm25s) over item text
  fusion     reciprocal rank fusion of two rankings
  metrics    NDCG@K, Recall@K and MRR from the target's rank (one relevant item)
  blair      the BLaIR ranker: review <-> item contrastive fine-tuning on training reviews
  study      every ranker scored on valid and once on test, the served mode chosen on valid (evaluate-search)
"""

SEARCH_MODES = ("dense", "lexical", "hybrid")  # how a query is answered: the encoder, BM25, or their fusion
