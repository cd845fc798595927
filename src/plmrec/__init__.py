"""plmrec: e-commerce recommendations improved with pretrained language models."""

__version__ = "0.1.0"
