"""Retrieval vs generation: methods, the comparison, the compositional split."""
