"""Embedding vectors as they travel: float32 little-endian bytes, one `bytes` per vector.

Four bytes a number is a quarter of what a pickled tuple of floats costs between processes, it is
the precision embedding models compute in, and it is exactly what OpenAI's
``encoding_format: "base64"`` sends (base64 of these bytes).
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable


def pack_vector(values: Iterable[float]) -> bytes:
    """One vector as float32 little-endian bytes."""
    a = array("f", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def unpack_vector(data: bytes) -> list[float]:
    """The floats of a vector packed by `pack_vector`."""
    a = array("f")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def shorten(values: list[float], dimensions: int) -> list[float]:
    """The first `dimensions` numbers, scaled to unit length again (how Matryoshka-trained models
    and OpenAI's ``dimensions`` shorten a vector)."""
    head = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return [v / norm for v in head] if norm > 0 else head
