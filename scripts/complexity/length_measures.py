"""Which measure of a prompt's length routes MMLU best, untrained (docs/routing.md):
bytes, words, distinct words, sentences, each alone, and the shipped scorer's weights with
ln(1 + bytes) or ln(1 + words) as its length term.

    python3 scripts/complexity/length_measures.py     # ROUTING_EVAL=... for another place
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evalset  # noqa: E402
import features as F  # noqa: E402


def show(name, rows, scores):
    r = evalset.evaluate(rows, scores)
    print(f"{name:32s} APGR {r['APGR']:.4f}  CPT(50%) {r['CPT50']:.1f}  CPT(80%) {r['CPT80']:.1f}")


def main():
    rows = evalset.rows()
    # The shipped weights but its length term; the request-shape features are the same for
    # every MMLU row, so they do not change the order.
    text_weights = {k: w for k, w in F.HAND.items() if k in F.TEXT_FEATURES and k != "log_chars"}
    cols = {k: [] for k in ("bytes", "words", "distinct", "sentences", "rest")}
    for r in rows:
        text = r["prompt"]
        c = F.scan(text.encode("utf-8"))
        words = [w.lower() for w in "".join(ch if ch.isascii() and ch.isalpha() else " "
                                            for ch in text).split()]
        v = dict(zip(F.NAMES, F.features({"messages": [{"role": "user", "content": text}]})))
        cols["bytes"].append(c["bytes"])
        cols["words"].append(c["words"])
        cols["distinct"].append(len(set(words)))
        cols["sentences"].append(c["sent_ends"])
        cols["rest"].append(sum(w * v[k] for k, w in text_weights.items()))
    for k in ("bytes", "words", "distinct", "sentences"):
        show(k + " alone", rows, cols[k])
    for k in ("bytes", "words"):
        show(f"shipped, ln(1 + {k})", rows,
             [math.log1p(n) + rest for n, rest in zip(cols[k], cols["rest"])])


if __name__ == "__main__":
    main()
