"""Contrastive fine-tuning, item/user embeddings, nearest-neighbour search and retrieval evaluation."""
