"""Utilities every layer may use: atomic writes, files, progress, devices, processes, batches."""
