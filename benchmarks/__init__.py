"""Speed benchmarks: polycap against re-implementations of the ClipCap reference loops.

Run ``python -m benchmarks.run`` (``make bench``; ``--help`` for options); it writes the
generated sections of docs/benchmarks.md. See benchmarks/run.py for how to plug one in.
"""
