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
