"""A tiny byte-level CLIP tokenizer that can be built offline (no vocabulary download).

Every byte has a token (alone and as a word end), and each word of `words` is merged into a
single token, so prompts like "part part part" map to one token per word, as with real CLIP.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_WORDS = ("part", "a", "photo", "of")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_vocab(words: Iterable[str] = DEFAULT_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges for a byte-level BPE that keeps each of `words` whole."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if (left, right) not in merges:
                merges.append((left, right))
            vocab.setdefault(merged, len(vocab))
            left = merged
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def build_tokenizer(words: Iterable[str] = DEFAULT_WORDS) -> CLIPTokenizer:
    """A CLIPTokenizer (77 positions) over the tiny byte-level vocabulary."""
    vocab, merges = build_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
