"""Retrieval: caption banks and nearest-neighbour search."""
