"""Tokenizing only the prefix a run needs, and the cache of recent texts: the same ids as
tokenizing the whole text, never another tokenizer's or another text's ids."""

from __future__ import annotations

import pytest

from explorer.core.tokens import tokenize
from tiny import SAMPLE_TEXT, byte_tokenizer


def _whole(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("max_tokens", [1, 50, 1000, 5000, None])
def test_prefix_tokenization_equals_the_whole_texts_first_tokens(smol, wiki, max_tokens):
    text = wiki.evaluation[:60_000]              # ~14k SmolLM2 tokens: the whole is quick to get
    whole = _whole(smol.tokenizer, text)
    assert tokenize(smol.tokenizer, text, max_tokens=max_tokens).tolist() == whole[:max_tokens]


def test_a_cut_inside_a_word_does_not_change_the_kept_tokens(smol):
    tok = smol.tokenizer
    # plain English first (the characters-per-token estimate is taken there), then rare words
    # of many tokens each, so the prefix comes out short and is grown, cut inside some word
    text = SAMPLE_TEXT * 3 + "".join(f" Zyxwvutsrq{i}qrstuvwxyz" for i in range(3000))
    whole = _whole(tok, text)
    for m in range(2000, 2400, 7):
        assert tokenize(tok, text, max_tokens=m).tolist() == whole[:m], m


def test_cache_is_per_tokenizer_and_per_text_and_hands_out_copies(smol):
    byte = byte_tokenizer()
    text = SAMPLE_TEXT
    a = tokenize(smol.tokenizer, text, max_tokens=40)
    b = tokenize(byte, text, max_tokens=40)
    assert a.tolist() == _whole(smol.tokenizer, text)[:40]
    assert b.tolist() == _whole(byte, text)[:40] and a.tolist() != b.tolist()
    a[:] = -1                                    # a caller writing into its ids...
    assert tokenize(smol.tokenizer, text, max_tokens=40).tolist() == _whole(smol.tokenizer,
                                                                            text)[:40]
    other = text[::-1]                           # same length, other text
    assert tokenize(byte, other, max_tokens=40).tolist() == _whole(byte, other)[:40]
    fresh = byte_tokenizer()                     # a new tokenizer object: computed, not reused
    assert tokenize(fresh, text, max_tokens=40).tolist() == b.tolist()
