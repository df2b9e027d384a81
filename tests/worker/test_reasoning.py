"""The reasoning splitter: thinking and answer apart, whatever the pieces the text arrives in."""

from __future__ import annotations

import itertools

from worker.reasoning import CONTENT, MARKUP, REASONING, ReasoningSplitter, Segment, partial_marker


def split_at(text: str, cuts: tuple[int, ...]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(text: str, *, opened: bool, cuts: tuple[int, ...] = ()) -> list[Segment]:
    splitter = ReasoningSplitter(opened=opened)
    out: list[Segment] = []
    for piece in split_at(text, cuts):
        out.extend(splitter.feed(piece))
    out.extend(splitter.finish())
    return out


def kinds(segments: list[Segment]) -> dict[int, str]:
    joined: dict[int, str] = {CONTENT: "", REASONING: "", MARKUP: ""}
    for segment in segments:
        joined[segment.kind] += segment.text
    return joined


def every_two_cuts(text: str) -> list[tuple[int, ...]]:
    return [(a, b) for a in range(1, len(text)) for b in range(a, len(text))]


OPENED_BY_MODEL = "\n<think>\nLet me see: 2 < 3.\n</think>\n\nTwo is less."


def test_thinking_the_model_opens_splits_the_same_at_any_two_cuts() -> None:
    for cuts in every_two_cuts(OPENED_BY_MODEL):
        segments = run(OPENED_BY_MODEL, opened=False, cuts=cuts)
        assert kinds(segments) == {
            REASONING: "Let me see: 2 < 3.",
            CONTENT: "Two is less.",
            MARKUP: "\n<think>\n\n</think>\n\n",
        }, cuts
        # Every character comes out once, in order.
        assert "".join(s.text for s in segments) == OPENED_BY_MODEL, cuts


OPENED_BY_PROMPT = "Hmm, </thin is not the end.</think>Yes."


def test_thinking_the_prompt_opened_splits_the_same_at_any_two_cuts() -> None:
    for cuts in every_two_cuts(OPENED_BY_PROMPT):
        segments = run(OPENED_BY_PROMPT, opened=True, cuts=cuts)
        assert kinds(segments)[REASONING] == "Hmm, </thin is not the end.", cuts
        assert kinds(segments)[CONTENT] == "Yes.", cuts
        assert "".join(s.text for s in segments) == OPENED_BY_PROMPT, cuts


def test_a_model_that_answers_at_once_streams_its_answer_unchanged() -> None:
    splitter = ReasoningSplitter(opened=False)
    assert splitter.feed(" Hello") == [Segment(CONTENT, " Hello")]
    assert splitter.feed(" there") == [Segment(CONTENT, " there")]
    assert splitter.finish() == []


def test_what_could_open_thinking_is_held_until_it_cannot() -> None:
    splitter = ReasoningSplitter(opened=False)
    assert splitter.feed("<thi") == []
    assert splitter.feed("s is html") == [Segment(CONTENT, "<this is html")]


def test_thinking_cut_off_by_the_token_limit_stays_thinking() -> None:
    assert kinds(run("Still thinking <", opened=True)) == {REASONING: "Still thinking <", CONTENT: "", MARKUP: ""}


def test_a_lone_start_of_a_marker_at_the_end_is_the_answer() -> None:
    assert kinds(run("  <th", opened=False))[CONTENT] == "  <th"


def test_partial_marker_finds_the_longest_tail_that_starts_the_marker() -> None:
    assert partial_marker("abc</thi", "</think>") == 5
    assert partial_marker("abc<", "</think>") == 1
    assert partial_marker("abc</think", "</think>") == 7
    assert partial_marker("a<b", "</think>") == 0
