"""Moderation: which categories the offline moderation model flags in a text.

A few plain words per category, matched as whole words: enough to show a lesson's code path for a
flagged input ("I will kill you" is violence and harassment/threatening) next to a clean one,
deterministically. It is not a content filter.
"""

from __future__ import annotations

import re

__all__ = ["flagged_categories"]

_WORDS = {
    "violence": "murder stab shoot",
    "harassment": "idiot stupid loser",
    "hate": "hate",
    "self-harm": "suicide",
    "illicit": "steal hack counterfeit",
}
_PATTERNS = {
    category: re.compile(rf"\b(?:{'|'.join(words.split())})\b", re.I)
    for category, words in _WORDS.items()
}
# "I will kill you" threatens; "kill the process" does not.
_THREAT = re.compile(
    r"\b(?:i|we)(?:\s+will|'ll|\s+am going to|\s+are going to)\s+(?:kill|hurt)\b", re.I
)


def flagged_categories(text: str) -> frozenset[str]:
    """The categories `text` falls into (empty: not flagged)."""
    found = {category for category, pattern in _PATTERNS.items() if pattern.search(text)}
    if _THREAT.search(text):
        found |= {"violence", "harassment", "harassment/threatening"}
    return frozenset(found)
