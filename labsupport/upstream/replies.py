"""Deterministic, meaningful replies: what the offline "model" says.

The offline upstream is not a language model, but the course's snippets ask it real questions
("Sentiment (one word): …", "List 3 topics (comma-separated): …", "Summarize in 5 words: …"), and
a lesson reads better when the answers make sense. Each reply here is a pure function of the prompt,
so a notebook prints the same text on every run.

Token counts are a simple, stable estimate (one token per word or punctuation mark): close enough to
make `usage` plausible, and cheap, because the mock's own cost per call must stay small.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "STOPWORDS",
    "Reply",
    "count_tokens",
    "course_kind",
    "names_in",
    "reply_to",
    "sentiment",
    "summary",
    "topics",
    "truncate_to_tokens",
]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

_SENTIMENT = re.compile(r"^\s*sentiment\b[^:]*:\s*(?P<text>.*)", re.I | re.S)
_TOPICS = re.compile(r"^\s*list\s+(?P<n>\d+)\s+topics?\b[^:]*:\s*(?P<text>.*)", re.I | re.S)
_SUMMARY = re.compile(
    r"^\s*summari[sz]e(?:\s+in\s+(?P<n>\d+|one|two|three|four|five|six|seven|eight|nine|ten)"
    r"\s+(?P<unit>words?|sentences?))?[^:]*:\s*(?P<text>.*)",
    re.I | re.S,
)
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_POSITIVE = _words(
    """
    good great excellent love loved loving like liked happy glad amazing awesome fantastic fixed
    wonderful best better improve improved improving improves growth grow growing gain
    gains win wins success successful transforming transform innovative investing invest
    benefit benefits efficient fast faster reliable delighted enjoy enjoyed helpful
    positive strong thriving
    """
)
_NEGATIVE = _words(
    """
    bad terrible awful hate hated poor worse worst fail failed failing failure broken slow
    slower crash crashed loss losses lose losing angry sad disappointed disappointing
    problem problems bug bugs outage error errors expensive risk risky weak decline
    declining negative frustrating frustrated useless
    """
)
STOPWORDS = _words(
    """
    a an the and or but if then so of to in on at by for with from into onto over under
    about as is are was were be been being am do does did have has had having it its this
    that these those there here their they them we us our you your he she his her i me my
    not no nor very more most much many some any all each every how what which who whom
    why when where while can could should would will shall may might must just also than
    too only own same such both few other again further once heavily operate operates
    """
)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model answers: the text and why it stopped."""

    text: str
    finish_reason: str  # "stop", or "length" when max_tokens cut the reply short


@functools.lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """Estimate tokens: one per word or punctuation mark."""
    return len(_TOKEN.findall(text))


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Keep the first `max_tokens` tokens of `text`, as the model would when cut off."""
    matches = list(_TOKEN.finditer(text))
    if len(matches) <= max_tokens:
        return text
    return text[: matches[max_tokens - 1].end()] if max_tokens > 0 else ""


@functools.lru_cache(maxsize=1024)
def reply_to(prompt: str, max_tokens: int | None = None) -> Reply:
    """The offline model's answer to `prompt`, cut to `max_tokens` if given. Answers are pure
    functions of their arguments, so repeated prompts (load tests) are answered from a cache."""
    text = _answer(prompt)
    if max_tokens is not None and count_tokens(text) > max_tokens:
        return Reply(truncate_to_tokens(text, max_tokens), "length")
    return Reply(text, "stop")


def course_kind(prompt: str) -> str | None:
    """Which of the course's prompt kinds `prompt` is ("sentiment", "topics", "summary"), or
    None: a structured answer to one of them carries what the chat reply says."""
    for kind, pattern in (("sentiment", _SENTIMENT), ("topics", _TOPICS), ("summary", _SUMMARY)):
        if pattern.match(prompt):
            return kind
    return None


def _answer(prompt: str) -> str:
    if match := _SENTIMENT.match(prompt):
        return sentiment(match["text"])
    if match := _TOPICS.match(prompt):
        return ", ".join(topics(match["text"], int(match["n"])))
    if match := _SUMMARY.match(prompt):
        return _summary(match["text"], match["n"], match["unit"])
    words = _WORD.findall(prompt)
    if not words:
        return "I received an empty message. What would you like to ask?"
    gist = " ".join(words[:12])
    return (
        f"Here is a short answer about “{gist}”: it depends on the details, so let us start there."
    )


def sentiment(text: str) -> str:
    """ "Positive", "Negative" or "Neutral": positive words minus negative words in `text`."""
    words = [w.lower() for w in _WORD.findall(text)]
    score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
    return "Positive" if score > 0 else "Negative" if score < 0 else "Neutral"


def topics(text: str, n: int) -> list[str]:
    """The first `n` distinct noun-like phrases: runs of up to two content words."""
    phrases: list[list[str]] = [[]]
    for token in _TOKEN.findall(text):
        word = token.lower()
        is_content = token[0].isalpha() and word not in STOPWORDS and not word.endswith("ly")
        if is_content and len(phrases[-1]) < 2:
            phrases[-1].append(token if token.isupper() else word)
        elif phrases[-1]:
            phrases.append([])
    candidates = [p for p in phrases if p and not (len(p) == 1 and p[0].endswith("ing"))]
    # Two-word phrases say more than single words; among equals, keep the text's order.
    ranked = sorted(candidates, key=lambda p: -len(p))
    topics: list[str] = []
    for phrase in ranked:
        topic = " ".join(phrase)
        if topic not in topics:
            topics.append(topic)
    chosen = sorted(topics[:n], key=lambda t: text.lower().find(t.lower()))
    return chosen or ["general"]


def summary(text: str) -> str:
    """The first sentence of `text`: what "Summarize in one sentence" answers."""
    return _summary(text, None, None)


def names_in(text: str) -> list[str]:
    """Capitalised words that are not sentence words ("What", "The"): "Paris", "Alice"."""
    names = []
    for word in _WORD.findall(text):
        bare = word.removesuffix("'s")
        if bare[0].isupper() and bare.lower() not in STOPWORDS and bare not in names:
            names.append(bare)
    return names


def _summary(text: str, amount: str | None, unit: str | None) -> str:
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    if not sentences:
        return "Nothing to summarize."
    count = _NUMBER_WORDS.get((amount or "one").lower()) or int(amount or 1)
    if unit and unit.lower().startswith("word"):
        words = sentences[0].rstrip(".!?").split()[:count]
        # A summary that ends on "how" or "the" reads broken; end on a content word.
        while len(words) > 1 and words[-1].lower() in STOPWORDS:
            words.pop()
        return " ".join(words) + "."
    return " ".join(sentences[:count])
