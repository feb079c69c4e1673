#!/usr/bin/env python3
"""Readability features on MMLU, untrained (docs/routing.md, "Readability points the wrong
way"): each alone, negated, and z-scored onto ln(1 + length) with a fixed weight. Scored by
the evaluation's own score.py. Standard library only.

    python3 scripts/complexity/readability.py     # ROUTING_EVAL=... for another place
"""
import math
import os
import re
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evalset  # noqa: E402

WORD = re.compile(r"[A-Za-z]+")
ROWS = evalset.rows()


def apgr(scores):
    return evalset.evaluate(ROWS, scores)["APGR"]


def features(prompt):
    words = WORD.findall(prompt) or ["x"]
    sentences = max(1, len(re.findall(r"[.!?](\s|$)", prompt)))
    syllables = sum(max(1, len(re.findall(r"[aeiouy]+", w.lower()))) for w in words)
    return {
        "length": math.log1p(len(prompt)),
        "word_length": sum(map(len, words)) / len(words),
        "long_words": sum(len(w) >= 7 for w in words) / len(words),
        "flesch_kincaid": 0.39 * len(words) / sentences + 11.8 * syllables / len(words),
        "type_token": len({w.lower() for w in words}) / len(words),
        "zlib_ratio": len(zlib.compress(prompt.encode())) / max(1, len(prompt)),
    }


def zscores(values):
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5 or 1.0
    return [(v - mean) / sd for v in values]


rows = [features(r["prompt"]) for r in ROWS]
columns = {k: [r[k] for r in rows] for k in rows[0]}
z = {k: zscores(v) for k, v in columns.items()}
for name, values in columns.items():
    print(f"{name:15} alone {apgr(values):.4f}  negated {apgr([-v for v in values]):.4f}")
for name in columns:
    if name == "length":
        continue
    for w in (0.5, 0.25, -0.25, -0.5):
        combined = [a + w * b for a, b in zip(z["length"], z[name])]
        print(f"length {w:+.2f} x {name:15} {apgr(combined):.4f}")
