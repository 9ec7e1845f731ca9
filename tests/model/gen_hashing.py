#!/usr/bin/env python3
"""Writes hashing_vectors.json: reference outputs of the hashing text featurizer (DESIGN.md §4).

An independent implementation of the spec in plain Python (stdlib only), so that
tests/model/test_hashing.c checks the C featurizer against something it was not derived from:

  - ASCII-lowercase: only A-Z become a-z, every other byte is unchanged;
  - tokens are maximal runs of ASCII letters, ASCII digits and bytes >= 0x80; every other
    byte (including '_', NUL, tabs, newlines) separates tokens;
  - features: for n = 1..ngrams, every run of n consecutive tokens joined by one space;
  - bucket = FNV-1a-32(feature bytes) mod dims; count per bucket; L2-normalize (all zeros
    stay all zeros).

Run from anywhere: python3 tests/model/gen_hashing.py. The output is committed; the C test
does not need Python. Values are written with repr() precision (shortest round-trip double).
"""
import base64
import json
import math
import os
import random

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


def fnv1a32(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def is_word_byte(b: int) -> bool:
    return (0x30 <= b <= 0x39) or (0x41 <= b <= 0x5A) or (0x61 <= b <= 0x7A) or b >= 0x80


def tokens(data: bytes) -> list:
    out, cur = [], bytearray()
    for b in data:
        if is_word_byte(b):
            cur.append(b + 32 if 0x41 <= b <= 0x5A else b)
        elif cur:
            out.append(bytes(cur))
            cur = bytearray()
    if cur:
        out.append(bytes(cur))
    return out


def featurize(data: bytes, dims: int, ngrams: int) -> dict:
    toks = tokens(data)
    counts = {}
    for n in range(1, ngrams + 1):
        for i in range(len(toks) - n + 1):
            bucket = fnv1a32(b" ".join(toks[i:i + n])) % dims
            counts[bucket] = counts.get(bucket, 0) + 1
    norm = math.sqrt(sum(c * c for c in counts.values()))
    if norm == 0:
        return {}
    return {b: c / norm for b, c in counts.items()}


def long_text(seed: int, size: int) -> str:
    """A few KB of word salad: mixed case, digits, punctuation, UTF-8, repeated words."""
    rng = random.Random(seed)
    vocab = ["the", "The", "THE", "model", "Serving", "engine", "x86", "2024", "a", "I",
             "naïve", "Zürich", "日本", "café", "data-set", "snake_case", "New", "York",
             "new", "york", "hash", "Hash", "bucket", "n-gram", "0", "42", "ÉLAN"]
    seps = [" ", " ", " ", "  ", ", ", ". ", "\n", "\t", " -- ", "; ", "! ", "(", ") "]
    parts = []
    total = 0
    while total < size:
        w = rng.choice(vocab)
        if rng.random() < 0.2:
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789")
                        for _ in range(rng.randint(1, 9)))
        s = rng.choice(seps)
        parts.append(w + s)
        total += len((w + s).encode("utf-8"))
    return "".join(parts)


def cases() -> list:
    c = []

    def add(text, dims, ngrams):
        c.append((text, dims, ngrams))

    add("", 16, 1)
    add("", 1000, 3)
    add("!!! ... --- ,;: ___ \t\n", 1000, 2)
    add("hello", 1000, 1)
    add("hello", 1000, 3)  # a single token: no bigrams or trigrams exist
    add("spam spam spam eggs spam", 1000, 1)  # counts > 1
    add("spam spam spam eggs spam", 1000, 2)
    add("Hello WORLD hello", 1000, 1)
    add("Hello WORLD hello", 1000, 2)
    add("Hello WORLD hello", 1000, 3)
    add("route 66 and 2024 vs 1e10 x86_64", 1000, 2)  # digits
    add("Crème brûlée à Zürich", 1000, 2)  # UTF-8 words stay whole
    add("日本語 テキスト", 1000, 2)
    add("Crème BRÛLÉE", 7, 1)  # only A-Z are lowercased: É stays É
    add(b"caf\xe9 na\xefve \xff\xfe BAD\xc3", 1000, 2)  # invalid UTF-8
    add(b"ab\x00cd \x00 EF", 1000, 2)  # NUL separates
    add(b"a\x80b x\x7fy \x80 Z@[`{z", 1000, 2)  # 0x80 is a word byte; 0x7f, @ [ ` { are not
    add("tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds", 1000, 2)
    add("the quick brown fox jumps over the lazy dog", 1, 2)  # dims 1: one bucket
    add("the quick brown fox jumps over the lazy dog", 7, 3)
    add("the quick brown fox jumps over the lazy dog", 1000, 1)
    add("the quick brown fox jumps over the lazy dog", 1000, 3)
    add("New York, new york! NEW-YORK", 1 << 20, 2)  # bigram "new york"
    add("the quick brown fox jumps over the lazy dog", 1 << 20, 3)
    add("a-b_c.d", 1000, 1)  # punctuation and underscore split
    add("a-b_c.d", 1000, 3)
    add("   leading and trailing   ", 13, 2)
    add("A", 2, 3)
    add("x y", 1000, 3)  # two tokens, ngrams 3: no trigram
    add(long_text(1234, 4096), 1000, 2)
    add(long_text(99, 3000), 1 << 20, 3)
    add(long_text(7, 2000), 7, 1)
    return c


def text_field(data: bytes) -> dict:
    """{"text": str} for valid UTF-8 without NUL, else {"text_b64": base64}."""
    try:
        s = data.decode("utf-8")
        if "\x00" not in s:
            return {"text": s}
    except UnicodeDecodeError:
        pass
    return {"text_b64": base64.b64encode(data).decode("ascii")}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = {"cases": [], "fnv": []}
    for text, dims, ngrams in cases():
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        case = text_field(data)
        case["dims"] = dims
        case["ngrams"] = ngrams
        feats = featurize(data, dims, ngrams)
        case["nonzero"] = [[b, feats[b]] for b in sorted(feats)]
        out["cases"].append(case)

    for s in [b"", b"a", b"foobar", b"hello world", b"new york", "Zürich".encode("utf-8"),
              b"\x00", b"\xff\x00\x80"]:
        entry = text_field(s)
        entry["hash"] = fnv1a32(s)
        out["fnv"].append(entry)
    # Published FNV-1a-32 test vectors (Fowler/Noll/Vo): guard the implementation above.
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968

    path = os.path.join(here, "hashing_vectors.json")
    with open(path, "w", encoding="utf-8") as f:
        # One case per line: readable diffs without one line per number.
        f.write("{\"cases\": [\n")
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in out["cases"]))
        f.write("\n],\n\"fnv\": [\n")
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in out["fnv"]))
        f.write("\n]}\n")
    print(f"wrote {len(out['cases'])} cases, {len(out['fnv'])} fnv values to {path}")


if __name__ == "__main__":
    main()
