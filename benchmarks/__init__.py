"""Speed benchmarks: polycap against re-implementations of the ClipCap reference loops.

Run ``python -m benchmarks.run`` (``--help`` for options); see docs/benchmarks.md.
"""
