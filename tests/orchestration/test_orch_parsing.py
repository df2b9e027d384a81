from __future__ import annotations

import pytest

from orchestration.confidence import best_version, critique_confidence, pipeline_confidence
from orchestration.parsing import parse_score, parse_verdict
from orchestration.similarity import agreement, similarity


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("- misses the edge case n=0\nSCORE: 7/10", 7.0),
        ("Score: 7", 7.0),
        ("Overall 7/10.", 7.0),
        ("I would give it a score of 7 out of 10", 7.0),
        ("I rate this answer a 4", 4.0),
        ("scored 6 out of 10", 6.0),
        ("**SCORE:** 8/10", 8.0),
        ("Rating = 8.5", 8.5),
        ("SCORE: 85/100", 8.5),
        ("SCORE: 12/10", 10.0),
        ("Score: 42", 10.0),
        ("Score: -3", 0.0),
        ("First draft SCORE: 3/10\nafter a second look\nSCORE: 9/10", 9.0),
    ],
)
def test_scores_in_the_asked_format_and_looser_ones(text: str, score: float) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No problems found.",
        "End with: SCORE: N/10",
        "Mix 1/2 cup of flour",
        "Released 10/10/2020",
        "Grade: B",
    ],
)
def test_no_score_is_none_never_a_top_mark(text: str) -> None:
    assert parse_score(text) is None


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("All fine.\nVERDICT: PASS", "pass"),
        ("**Verdict:** pass", "pass"),
        ("VERDICT: FAIL\n- the sum is wrong", "fail"),
        ("Verdict - FAILED", "fail"),
        ("I mention the word fail here.\nVERDICT: PASS", "pass"),
        ("VERDICT: PASS or VERDICT: FAIL followed by reasons", "fail"),
        ("Looks good to me.", "pass"),
        ("Approved.", "pass"),
        ("LGTM", "pass"),
        ("This is incorrect: 2+2 is 4.", "fail"),
        ("It does not pass the checks.", "fail"),
        ("The answer is not correct.", "fail"),
    ],
)
def test_verdicts(text: str, verdict: str) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text", ["", "Hmm, hard to say.", "Parts are correct but the total is wrong."])
def test_unclear_verdicts_are_none(text: str) -> None:
    assert parse_verdict(text) is None


def test_similarity_is_bag_of_words_cosine() -> None:
    assert similarity("The answer is 4.", "the ANSWER is 4") == pytest.approx(1.0)
    assert similarity("Paris is the capital", "capital: Paris") == pytest.approx(1.0)
    assert similarity("cats purr softly", "rockets need fuel") == 0.0
    assert similarity("", "") == 0.0
    assert similarity("x", "") == 0.0
    partial = similarity("four apples and two pears", "four apples and three plums")
    assert 0.3 < partial < 0.7


def test_agreement_is_the_mean_over_pairs_and_deterministic() -> None:
    texts = ["alpha beta", "alpha beta", "gamma delta"]
    assert agreement(texts) == pytest.approx(1 / 3)
    assert agreement(texts) == agreement(list(texts))
    assert agreement(["only one"]) == 1.0
    assert agreement([]) == 0.0


def test_best_version_prefers_highest_then_latest_then_last() -> None:
    assert best_version([7.0, 5.0]) == 0
    assert best_version([6.0, 6.0]) == 1
    assert best_version([None, 4.0, None]) == 1
    assert best_version([None, None]) == 1


def test_confidences() -> None:
    assert critique_confidence([4.0, 9.0]) == 0.9
    assert critique_confidence([None, None]) == 0.3
    assert pipeline_confidence("pass", validated=True) == 0.9
    assert pipeline_confidence("fail", validated=True) == 0.5
    assert pipeline_confidence(None, validated=True) == 0.6
    assert pipeline_confidence(None, validated=False) == 0.6
