"""sdgen's keras-free CLIP tokenizer gives keras-cv's ids, prompt for prompt."""

import gzip
from collections import Counter

import pytest

from sdgen.engine.tokenizer import CONTEXT_LENGTH, PAD, ClipTokenizer, byte_alphabet
from sdgen.engine.weights import random_tokenizer_file

PROMPTS = [
    "a watercolor painting of a lighthouse at dawn",
    "A   WATERCOLOR\tpainting\n of a Lighthouse",
    "it's the cat's pyjamas, isn't it? they'll we'd I'm you're we've",
    "1984 x 2001: 3.14159 — numbers 007",
    "tom &amp; jerry &amp;amp; friends &lt;3",
    "café crème brûlée, naïve façade",
    "日本語のプロンプト 東京タワー",
    "emoji 🚀🌕 and ★ symbols ©®",
    "<|startoftext|>explicit markers<|endoftext|>",
    "punctuation!!! ... ??? --- ((nested)) [brackets] {braces}",
    "",
    "   ",
    "the the the thethe theatre threshold thither",
    "hyphen-ated words_and_underscores/slashes",
]


def _train_merges(text: str, count: int) -> list[str]:
    """A small real BPE training run, so merges chain (pairs of merged symbols) and compete
    by rank the way CLIP's do."""
    alphabet = byte_alphabet()
    words = Counter()
    for word in text.lower().split():
        symbols = [alphabet[b] for b in word.encode("utf-8")]
        words[tuple(symbols[:-1] + [symbols[-1] + "</w>"])] += 1
    merges = []
    for _ in range(count):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


@pytest.fixture(scope="module")
def trained_merges(tmp_path_factory):
    corpus = " ".join(PROMPTS * 3) + " the lighthouse painting watercolor dawn theatre there these " * 20
    path = tmp_path_factory.mktemp("bpe") / "trained.txt.gz"
    merges = _train_merges(corpus, 400)
    assert len(merges) > 100 and any(len(m.split()[0]) > 2 for m in merges)  # chained merges exist
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: test\n" + "\n".join(merges) + "\n")
    return path


@pytest.mark.parametrize("which", ["trained", "random"])
def test_same_ids_as_keras_cv(which, trained_merges, tmp_path):
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    path = trained_merges if which == "trained" else random_tokenizer_file(tmp_path)
    ours, theirs = ClipTokenizer(path), SimpleTokenizer(bpe_path=str(path))
    for prompt in PROMPTS:
        assert ours.encode(prompt) == theirs.encode(prompt), prompt
    assert (ours.start, ours.end) == (theirs.start_of_text, theirs.end_of_text)


def test_phrase_pads_to_the_context_and_refuses_long_prompts(trained_merges):
    tokenizer = ClipTokenizer(trained_merges)
    phrase = tokenizer.phrase("a lighthouse")
    assert len(phrase) == CONTEXT_LENGTH and phrase[-1] == PAD and phrase[0] == tokenizer.start
    with pytest.raises(ValueError, match="too long"):
        tokenizer.phrase("lighthouse " * 80)
