"""CLIP's byte-level BPE tokenizer, without keras.

A worker that starts from a model snapshot (snapshot.py) never imports keras or keras-cv
(5 s of a new worker's start on an H100 node), but it still has to turn prompts into the
token ids keras-cv's `SimpleTokenizer` gives: same merges file, same rules, same ids
(tests/engine/test_tokenizer.py compares the two on many prompts).

The rules: text is HTML-unescaped twice, whitespace-collapsed and lower-cased; split into
words, digits and runs of punctuation; each piece's UTF-8 bytes become printable characters;
BPE merges the adjacent pair with the lowest rank until none is in the merges list; the
last symbol of a word carries the `</w>` suffix.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import regex

CONTEXT_LENGTH = 77  # CLIP's text encoder takes exactly 77 positions
PAD = 49407  # keras-cv pads with CLIP's end-of-text id whatever the merges file
_MERGES = 49152 - 256 - 2  # CLIP's vocabulary size minus bytes and the two specials
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Every byte as one printable character: printable Latin-1 bytes stand for
    themselves, the others are moved up past 255 in order. The table's order (printable
    first) is the vocabulary's order, so it is kept."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = (b for b in range(256) if b not in keep)
    table = {b: chr(b) for b in keep}
    for offset, b in enumerate(moved):
        table[b] = chr(256 + offset)
    return table


class ClipTokenizer:
    def __init__(self, merges_path: Path | str):
        with gzip.open(merges_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : _MERGES + 1]  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines]
        symbols = list(byte_alphabet().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.rank = {pair: i for i, pair in enumerate(merges)}
        self.start, self.end = self.ids[_SPECIALS[0]], self.ids[_SPECIALS[1]]
        specials = "|".join(regex.escape(s) for s in _SPECIALS)
        self.pattern = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self._words: dict[str, list[str]] = {s: [s] for s in _SPECIALS}

    def _merge(self, word: str) -> list[str]:
        if word in self._words:
            return self._words[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [pair for pair in zip(parts, parts[1:]) if pair in self.rank]
            if not pairs:
                break
            first, second = min(pairs, key=self.rank.__getitem__)
            merged, i = [], 0
            # every non-overlapping occurrence of the best pair, left to right
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._words[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids with the start and end markers, not padded."""
        text = regex.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip().lower()
        alphabet = byte_alphabet()
        ids = [self.start]
        for piece in self.pattern.findall(text):
            word = "".join(alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[symbol] for symbol in self._merge(word))
        return ids + [self.end]

    def phrase(self, text: str) -> list[int]:
        """The 77 ids the text encoder takes; ValueError when the prompt is too long."""
        ids = self.encode(text)
        if len(ids) > CONTEXT_LENGTH:
            raise ValueError(f"prompt is {len(ids)} tokens, more than {CONTEXT_LENGTH}: too long")
        return ids + [PAD] * (CONTEXT_LENGTH - len(ids))
