"""Incremental detokenization: UTF-8 split across byte tokens, stop strings held back and cut."""

from __future__ import annotations

from serving.detokenizer import IncrementalDetokenizer
from serving.model import build_byte_tokenizer

TOK = build_byte_tokenizer()


def feed(text: str, stop: list[str]) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(TOK, TOK.encode("prompt: "), stop)
    deltas = []
    for byte in text.encode():
        deltas.append(detok.add([byte]))
        if detok.stopped:
            break
    deltas.append(detok.finish())
    return deltas, detok


def test_multibyte_characters_arrive_whole() -> None:
    deltas, _ = feed("né€", [])
    assert "".join(deltas) == "né€"
    assert "\ufffd" not in "".join(deltas)
    assert deltas[1] == "" and deltas[2] == "é"  # first byte of é alone shows nothing


def test_stop_string_is_cut_and_never_streamed() -> None:
    deltas, detok = feed("hello world. bye", ["world"])
    assert detok.stopped
    assert "".join(deltas) == "hello "
    assert all("w" not in d for d in deltas)


def test_no_stop_string_streams_every_character() -> None:
    deltas, _ = feed("abc", [])
    assert deltas == ["a", "b", "c", ""]


def test_incomplete_utf8_at_the_end_is_flushed_as_replacement() -> None:
    detok = IncrementalDetokenizer(TOK, [], [])
    assert detok.add([0xC3]) == ""
    assert detok.finish() == "\ufffd"
