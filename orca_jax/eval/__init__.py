"""Evaluation: greedy decoding, answer extraction and exact match, BBH / AGIEval readers, the CLI."""
