"""Run a script, or ``-c CODE``, in a Python where ``import polycap`` fails.

    python tests/no_polycap.py SCRIPT [ARGS...]
    python tests/no_polycap.py -c CODE [ARGS...]

A meta path finder refuses ``polycap`` and every ``polycap.*`` module (the package is installed
in the virtual environment, so leaving it off ``PYTHONPATH`` would not keep it out); the script
then runs as ``__main__``. What an export ships must work this way.
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys


class NoPolycap(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name == "polycap" or name.startswith("polycap."):
            raise ImportError(f"{name}: blocked (this process runs without polycap)")
        return None


def main() -> None:
    sys.meta_path.insert(0, NoPolycap())
    try:
        import polycap  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("polycap could still be imported")
    if sys.argv[1] == "-c":
        code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
        exec(compile(code, "<no_polycap -c>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
