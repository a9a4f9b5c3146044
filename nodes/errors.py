"""Turn core errors into one readable line for the ComfyUI queue (no traceback for bad input)."""

from __future__ import annotations

import contextlib


class LayerT2VInputError(ValueError):
    """Raised by nodes for bad input; the message names the node input and what would be valid."""


@contextlib.contextmanager
def readable_errors(node: str):
    try:
        yield
    except LayerT2VInputError:
        raise
    except (ValueError, KeyError, FileNotFoundError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise LayerT2VInputError(f"{node}: {message}") from None


def check_finite(node: str, name: str, t) -> None:
    """Refuse NaN/inf pixels in an IMAGE or MASK input, naming the input and how many."""
    import torch

    bad = ~torch.isfinite(t)
    if bad.any():
        raise LayerT2VInputError(f"{node}: {name} contains {int(bad.sum())} NaN or infinite value(s); "
                                 "every pixel must be a finite number in [0, 1]")
