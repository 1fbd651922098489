"""The data layer (see docs/architecture.md).

Names of the former module ``polycap.data`` still resolve here for one release, with a
DeprecationWarning naming their new module.
"""

from __future__ import annotations


def __getattr__(name: str) -> object:
    from polycap.compat import attribute_of_moved

    return attribute_of_moved(__name__, name)
