"""Data: OpenOrca-style records -> validated, sharded TFDS datasets -> tokens -> packed batches.

Submodules are imported where used, so that reading shards never pulls in the teacher client and the
training path never pulls in the parquet/JSONL readers.
"""
