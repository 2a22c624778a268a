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
    words = tuple(words)
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
    # Merges of one word can split another (BPE applies the lowest-ranked pair first: "and"'s
    # a+n breaks "orange"); join what is left of such words with merges appended after all
    # others, so the ids of words that were already whole do not change.
    for _ in range(8):
        ranks = {m: i for i, m in enumerate(merges)}
        split = [(w, p) for w in words if len(p := _bpe(w, ranks)) > 1]
        if not split:
            break
        for _word, pieces in split:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in ranks:
                    ranks[(left, right)] = len(merges)
                    merges.append((left, right))
                vocab.setdefault(left + right, len(vocab))
                left = left + right
    else:
        raise ValueError(f"could not keep every word whole: {[w for w, _ in split]}")
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces CLIP's byte-level BPE splits `word` into under merge ranks `ranks`."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        best = min(zip(parts, parts[1:], strict=False), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_tokenizer(words: Iterable[str] = DEFAULT_WORDS) -> CLIPTokenizer:
    """A CLIPTokenizer (77 positions) over the tiny byte-level vocabulary."""
    vocab, merges = build_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
