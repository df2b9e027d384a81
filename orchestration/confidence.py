"""The ``confidence`` (0..1) an orchestrated answer reports, per mode.

- critique: the best critic score divided by 10 (a critique ending ``SCORE: 8/10`` gives
  0.8). The answer returned is the best-scoring version, ties going to the later one.
  When no critique carried a readable score the answer is the last revision and the
  confidence 0.3; an unreadable critique never counts as a good score, so it never ends
  the loop early.
- debate: the agreement of the final round's answers (mean pairwise similarity, see
  ``orchestration.similarity``).
- ensemble: the agreement of all answers; below INFERENCE_ENSEMBLE_MIN_AGREEMENT the
  summary also sets ``low_confidence``.
- pipeline: 0.9 when the validator passed the answer; 0.5 when it failed it and one more
  refinement (with the validator's reasons) wrote the answer; 0.6 when its verdict could
  not be read (the answer is refined once more too) or the pipeline has no validate stage.
- single: 1.0 (no second opinion was asked for; reported for completeness only).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestration.parsing import Verdict

NO_SCORE_CONFIDENCE = 0.3
PASS_CONFIDENCE = 0.9
FAIL_CONFIDENCE = 0.5
UNCLEAR_CONFIDENCE = 0.6


def best_version(scores: Sequence[float | None]) -> int:
    """Index of the version to return: the highest score, the later on ties, the last if none."""
    best: int | None = None
    for index, score in enumerate(scores):
        if score is not None and (best is None or score >= (scores[best] or 0.0)):
            best = index
    return len(scores) - 1 if best is None else best


def critique_confidence(scores: Sequence[float | None]) -> float:
    known = [s for s in scores if s is not None]
    return round(max(known) / 10, 4) if known else NO_SCORE_CONFIDENCE


def pipeline_confidence(verdict: Verdict | None, *, validated: bool) -> float:
    if not validated or verdict is None:
        return UNCLEAR_CONFIDENCE
    return PASS_CONFIDENCE if verdict == "pass" else FAIL_CONFIDENCE


def agreement_confidence(agreement: float) -> float:
    return round(min(max(agreement, 0.0), 1.0), 4)
