"""Device names, resolved in one place for every command.

``auto`` (the CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
A name that is not a device, or a device this machine does not have, is one line listing what
this machine has.
"""

from __future__ import annotations

from typing import Any

from polycap.errors import BadInput


def available_devices() -> list[str]:
    """The devices torch can use here, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str, option: str = "--device") -> Any:
    """The ``torch.device`` for ``name``; BadInput naming ``option`` when it is not available."""
    import torch

    available = available_devices()
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = f"available here: {', '.join(available)} (or auto)"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise BadInput(f"{option} {name}: not a device name; {choices}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"{option} {name}: no CUDA GPU on this machine; {choices}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"{option} {name}: there is no GPU {device.index}; {choices}")
        return device
    if device.type == "mps" and "mps" in available:
        return device
    raise BadInput(f"{option} {name}: not available on this machine; {choices}")
