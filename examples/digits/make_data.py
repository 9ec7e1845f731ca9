#!/usr/bin/env python3
"""Makes train.jsonl and test.jsonl for the digits example (stdlib only, reproducible).

Source: digits.csv.gz from scikit-learn 1.2.1 (Debian python3-sklearn): 1797 rows of 64 pixel
values 0-16 (an 8x8 image, row-major) followed by the digit. See LICENSE.md.

The rows are shuffled with random.Random(0); the first 80% (1437 rows) become train.jsonl and
the rest (360 rows) test.jsonl, one sample a line: {"input": [64 ints], "label": "<digit>"}.

Usage: python3 make_data.py [path/to/digits.csv.gz]
  (default: /work/shared/data/sklearn/digits.csv.gz; outputs are written beside this script)
"""
import gzip
import json
import os
import random
import sys

DEFAULT_SRC = "/work/shared/data/sklearn/digits.csv.gz"


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SRC
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    with gzip.open(src, "rt", encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            vals = [int(float(v)) for v in line.split(",")]
            if len(vals) != 65 or not all(0 <= v <= 16 for v in vals[:64]) \
                    or not 0 <= vals[64] <= 9:
                sys.exit(f"{src}:{lineno}: expected 64 pixels in 0..16 and a digit")
            rows.append(vals)
    if len(rows) != 1797:
        sys.exit(f"{src}: expected 1797 rows, got {len(rows)}")

    random.Random(0).shuffle(rows)
    n_train = len(rows) * 8 // 10  # 1437
    for name, part in (("train.jsonl", rows[:n_train]), ("test.jsonl", rows[n_train:])):
        with open(os.path.join(here, name), "w", encoding="ascii") as f:
            for r in part:
                f.write(json.dumps({"input": r[:64], "label": str(r[64])}) + "\n")
        print(f"wrote {len(part)} rows to {name}")


if __name__ == "__main__":
    main()
