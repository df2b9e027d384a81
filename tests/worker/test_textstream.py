from worker.textstream import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_plain_pieces_pass_through() -> None:
    assert feed_all(TextStream(stop=[]), [b"Hel", b"lo", b" world"]) == "Hello world"


def test_multibyte_character_split_across_pieces_is_reassembled() -> None:
    stream = TextStream(stop=[])
    euro = "€".encode()
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:]) == "€"


def test_stop_string_split_over_pieces_is_cut_and_never_sent() -> None:
    stream = TextStream(stop=["END"])
    sent = [stream.feed(p) for p in [b"one E", b"N", b"D two"]]
    assert "".join(sent) == "one "
    assert stream.stopped
    assert stream.flush() == ""


def test_held_back_prefix_released_when_it_is_not_a_stop() -> None:
    stream = TextStream(stop=["END"])
    assert stream.feed(b"an E") == "an "
    assert stream.feed(b"x") == "Ex"
    assert not stream.stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    assert feed_all(TextStream(stop=["b", "xyz"]), [b"axyzb"]) == "a"
