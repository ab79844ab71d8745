"""Embeddings: deterministic unit vectors in which similar texts lie close together.

A real embedding model maps meaning; the offline one maps spelling, which is enough for a lesson
on search: each text becomes the sum of its hashed character trigrams (and words), normalised to
length 1. Texts that share words and word pieces share buckets, so their cosine similarity (a dot
product, for unit vectors) is higher than for unrelated texts; the same text always gets the same
vector, in every process (the hash is CRC-32, not Python's salted `hash`).
"""

from __future__ import annotations

import functools
import math
import re
import zlib

__all__ = ["DIMENSIONS", "embed"]

# The models' native sizes; `dimensions` may ask for fewer (not for text-embedding-ada-002).
DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}

_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=4096)
def embed(text: str, dimensions: int) -> tuple[float, ...]:
    """The unit vector of `text` in `dimensions` dimensions."""
    vector = [0.0] * dimensions
    lowered = text.lower()
    grams = [f"w:{word}" for word in _WORD.findall(lowered)]
    padded = f" {' '.join(_WORD.findall(lowered))} "
    grams += [padded[i : i + 3] for i in range(len(padded) - 2)]
    for gram in grams:
        code = zlib.crc32(gram.encode())
        # One bit of the hash picks the sign, so unrelated grams cancel out on average.
        vector[(code >> 1) % dimensions] += -1.0 if code & 1 else 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:  # no letters or digits at all: still a unit vector, the same every time
        vector[0], norm = 1.0, 1.0
    return tuple(x / norm for x in vector)
