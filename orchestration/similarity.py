"""How much several answers agree: the mean pairwise cosine similarity of word counts.

Each text becomes a bag of lower-cased word tokens (letters and digits; punctuation and
markup dropped), common English function words removed so two unrelated answers do not
look alike merely for sharing "the" and "is". Two texts score the cosine of their count
vectors, 0..1. A bag of words ignores order, so two answers that make the same points in
another order still agree, and it costs time linear in the text (difflib's ratio is
quadratic and order-sensitive). Pure Python and deterministic: the same answers always
give the same agreement, so a retried step takes the same decision.

An empty answer agrees with nothing (0.0): two empty answers share no content.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import combinations

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# fmt: off
_FUNCTION_WORDS = frozenset(
    (
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "for", "from", "has", "have", "he",
        "her", "his", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or",
        "our", "she", "so", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to",
        "was", "we", "were", "what", "when", "which", "who", "will", "with", "would", "you", "your",
    )
)
# fmt: on


def _bag(text: str) -> Counter[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    content = [w for w in words if w not in _FUNCTION_WORDS]
    # An answer of only function words ("It is.") still has something to compare.
    return Counter(content or words)


def similarity(first: str, second: str) -> float:
    """Cosine similarity of two texts' word counts, in [0, 1]."""
    a, b = _bag(first), _bag(second)
    if not a or not b:
        return 0.0
    dot = sum(count * b[word] for word, count in a.items() if word in b)
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return min(dot / norm, 1.0)


def agreement(texts: Sequence[str]) -> float:
    """Mean similarity over every pair of texts; 1.0 for a single text, 0.0 for none."""
    if len(texts) < 2:
        return 1.0 if texts else 0.0
    pairs = list(combinations(texts, 2))
    return sum(similarity(a, b) for a, b in pairs) / len(pairs)
