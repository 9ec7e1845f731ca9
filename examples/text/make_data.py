#!/usr/bin/env python3
"""Makes train.jsonl and test.jsonl for the text classification example (stdlib only).

Source: the BSD fortune files art, computers, food, politics, science and work from Debian's
fortunes 1.99.1 (see LICENSE.md). Each file holds entries separated by lines holding only "%";
the file name is the label.

Kept: entries of 20-400 characters (after trimming surrounding whitespace) without control
characters other than tab and newline (a few entries use backspace overstriking or bells), and
not appearing twice (an entry found in two categories, or twice in one, is dropped entirely).
From each category at most 300 are drawn with random.Random(0); each category is then split
80/20 (train/test) after a seeded shuffle, and both files are shuffled so that categories are
interleaved. One sample a line: {"input": "<text>", "label": "<category>"}.

Usage: python3 make_data.py [fortunes-dir]   (default: /work/shared/data/fortunes)
"""
import collections
import json
import os
import random
import sys

DEFAULT_SRC = "/work/shared/data/fortunes"
CATEGORIES = ["art", "computers", "food", "politics", "science", "work"]
MIN_CHARS, MAX_CHARS, PER_CATEGORY = 20, 400, 300


def entries(path):
    with open(path, encoding="utf-8") as f:
        cur = []
        for line in f:
            if line.rstrip("\n") == "%":
                yield "".join(cur).strip()
                cur = []
            else:
                cur.append(line)
        if cur:
            yield "".join(cur).strip()


def usable(text):
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        return False
    return all(c in "\t\n" or (ord(c) >= 0x20 and ord(c) != 0x7F) for c in text)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SRC
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(0)

    by_cat = {c: [t for t in entries(os.path.join(src, c)) if usable(t)] for c in CATEGORIES}
    seen = collections.Counter(t for texts in by_cat.values() for t in texts)
    train, test = [], []
    for cat in CATEGORIES:
        texts = [t for t in by_cat[cat] if seen[t] == 1]
        if len(texts) > PER_CATEGORY:
            texts = rng.sample(texts, PER_CATEGORY)
        else:
            rng.shuffle(texts)
        n_train = round(len(texts) * 0.8)
        train += [(t, cat) for t in texts[:n_train]]
        test += [(t, cat) for t in texts[n_train:]]
        print(f"{cat}: {n_train} train, {len(texts) - n_train} test")
    rng.shuffle(train)
    rng.shuffle(test)

    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            for text, cat in part:
                f.write(json.dumps({"input": text, "label": cat}, ensure_ascii=False) + "\n")
        print(f"wrote {len(part)} samples to {name}")


if __name__ == "__main__":
    main()
