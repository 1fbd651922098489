"""Evaluation: metrics, the evaluation runner, prediction files, compare and HTML reports."""
