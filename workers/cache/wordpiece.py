"""BERT's uncased WordPiece tokenizer, in plain Python (pure: the vocabulary is an argument).

Why not the `tokenizers` package: its current releases pull in huggingface-hub, whose
click>=8.4 requirement conflicts with faust-streaming's click<8.4 pin; a gateway needs
none of the hub. This module follows the tokenizer.json that ships with
all-MiniLM-L6-v2 (BertNormalizer with clean_text, handle_chinese_chars, lowercase and
accent stripping; BertPreTokenizer; WordPiece with `##` continuations and words over
100 characters as [UNK]; [CLS] ... [SEP]). Checked against `tokenizers` 0.23.3 on the
cache's labelled prompt set: identical ids (docs/decisions/0017).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

CLS: Final = "[CLS]"
SEP: Final = "[SEP]"
UNK: Final = "[UNK]"
MAX_WORD_CHARS: Final = 100
"""A longer whitespace/punctuation-delimited word becomes one [UNK] (as BERT does)."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """Token ids with [CLS]/[SEP]; `truncated` says text was cut to fit `max_tokens`."""

    ids: tuple[int, ...]
    truncated: bool


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def normalize(text: str) -> str:
    """BertNormalizer: drop control characters, space out CJK, strip accents, lowercase."""
    out: list[str] = []
    for char in text:
        cp = ord(char)
        if cp in (0, 0xFFFD) or _is_control(char):
            continue
        if _is_whitespace(char):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {char} ")
        else:
            out.append(char)
    decomposed = unicodedata.normalize("NFD", "".join(out))
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn").lower()


def pre_tokenize(text: str) -> list[str]:
    """BertPreTokenizer: split on whitespace, and every punctuation character alone."""
    words: list[str] = []
    for chunk in text.split():
        current: list[str] = []
        for char in chunk:
            if _is_punctuation(char):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(char)
            else:
                current.append(char)
        if current:
            words.append("".join(current))
    return words


class WordPiece:
    """Text -> ids of one BERT vocabulary. Built once; `encode` is pure and thread-safe."""

    def __init__(self, vocab: Mapping[str, int]) -> None:
        self._vocab = dict(vocab)
        self._unk = self._vocab[UNK]
        self._cls = self._vocab[CLS]
        self._sep = self._vocab[SEP]

    @classmethod
    def from_vocab_text(cls, text: str) -> WordPiece:
        """From vocab.txt: one token per line, the id is the line number."""
        return cls({token: i for i, token in enumerate(text.splitlines())})

    def word_ids(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word; [UNK] if any part has none."""
        if len(word) > MAX_WORD_CHARS:
            return [self._unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found: int | None = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self._vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self._unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_tokens: int) -> Encoding:
        """[CLS] pieces [SEP], at most `max_tokens` ids in all (the pieces cut to fit)."""
        pieces: list[int] = []
        for word in pre_tokenize(normalize(text)):
            pieces.extend(self.word_ids(word))
        room = max_tokens - 2
        truncated = len(pieces) > room
        return Encoding((self._cls, *pieces[:room], self._sep), truncated)
