#!/usr/bin/env python3
"""Makes train.jsonl for the regression example (stdlib only, reproducible).

1000 samples of the smooth function y = sin(x0) * cos(x1) + 0.1 * x0 with x0, x1 uniform in
[-2, 2], drawn from random.Random(0). Inputs are rounded to 6 decimals and y is computed from
the rounded inputs (then rounded to 8 decimals), so the file is exact as written.
One sample a line: {"input": [x0, x1], "target": [y]}. Written beside this script.
"""
import json
import math
import os
import random

N = 1000


def f(x0, x1):
    return math.sin(x0) * math.cos(x1) + 0.1 * x0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(0)
    with open(os.path.join(here, "train.jsonl"), "w", encoding="ascii") as out:
        for _ in range(N):
            x0 = round(rng.uniform(-2.0, 2.0), 6)
            x1 = round(rng.uniform(-2.0, 2.0), 6)
            y = round(f(x0, x1), 8)
            out.write(json.dumps({"input": [x0, x1], "target": [y]}) + "\n")
    print(f"wrote {N} samples to train.jsonl")


if __name__ == "__main__":
    main()
