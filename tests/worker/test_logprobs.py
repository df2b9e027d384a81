"""Text released in whole tokens, each token carrying its log probability: stops, split characters, tails."""

from __future__ import annotations

from worker.logprobs import LogprobText, Scored
from worker.protocol import TokenLogprob


def run(pieces: list[bytes], *, stop: list[str]) -> tuple[list[tuple[str, list[TokenLogprob]]], bool]:
    """Feeds the pieces (each scored with minus its position) and flushes unless a stop string ended them."""
    stream = LogprobText(stop=stop)
    emitted: list[tuple[str, list[TokenLogprob]]] = []
    for i, piece in enumerate(pieces):
        text, entries = stream.feed(piece, Scored(logprob=-float(i), top=[]))
        assert bool(text) or not entries
        if text:
            emitted.append((text, entries))
        if stream.stopped:
            return emitted, True
    text, entries = stream.flush()
    if text:
        emitted.append((text, entries))
    return emitted, False


def assert_tokens_make_each_text(emitted: list[tuple[str, list[TokenLogprob]]]) -> None:
    for text, entries in emitted:
        assert "".join(entry.token for entry in entries) == text


def test_every_token_goes_out_with_its_own_text() -> None:
    emitted, stopped = run([b"Hello", b",", b" world"], stop=[])
    assert not stopped
    assert emitted == [
        ("Hello", [TokenLogprob(token="Hello", logprob=0.0, bytes=list(b"Hello"))]),
        (",", [TokenLogprob(token=",", logprob=-1.0, bytes=list(b","))]),
        (" world", [TokenLogprob(token=" world", logprob=-2.0, bytes=list(b" world"))]),
    ]


def test_a_token_partly_held_for_a_possible_stop_string_waits_whole() -> None:
    # "lo\nUs" may begin "\nUser"; then "er" completes it: "lo" is all that is left of the token.
    emitted, stopped = run([b"Hel", b"lo\nUs", b"er", b"!"], stop=["\nUser"])
    assert stopped
    assert_tokens_make_each_text(emitted)
    assert "".join(text for text, _ in emitted) == "Hello"
    last = emitted[-1][1][-1]
    assert (last.token, last.logprob, last.bytes) == ("lo", -1.0, list(b"lo"))
    assert [entry.logprob for _, entries in emitted for entry in entries] == [0.0, -1.0]


def test_a_token_cut_entirely_by_the_stop_string_is_dropped() -> None:
    emitted, stopped = run([b"Yes", b".", b" END", b" more"], stop=[" END"])
    assert stopped
    assert [entry.token for _, entries in emitted for entry in entries] == ["Yes", "."]
    assert "".join(text for text, _ in emitted) == "Yes."


def test_a_held_back_false_alarm_is_released_with_its_token() -> None:
    emitted, stopped = run([b"a", b" E", b"ND", b"ING"], stop=[" END!"])
    assert not stopped
    assert_tokens_make_each_text(emitted)
    assert "".join(text for text, _ in emitted) == "a ENDING"
    assert len([entry for _, entries in emitted for entry in entries]) == 4


def test_a_character_split_over_two_tokens_goes_with_the_token_completing_it() -> None:
    euro = "€".encode()
    emitted, _ = run([b"1", euro[:1], euro[1:], b"!"], stop=[])
    assert_tokens_make_each_text(emitted)
    entries = [entry for _, batch in emitted for entry in batch]
    assert [entry.token for entry in entries] == ["1", "", "€", "!"]
    assert [entry.bytes for entry in entries] == [[ord("1")], list(euro[:1]), list(euro[1:]), [ord("!")]]


def test_a_generation_ending_inside_a_character_ends_with_a_replacement() -> None:
    emitted, stopped = run([b"ok", "€".encode()[:2]], stop=[])
    assert not stopped
    assert_tokens_make_each_text(emitted)
    assert emitted[-1][0] == "\ufffd"
    assert emitted[-1][1][0].bytes == list("€".encode()[:2])
