"""The routing-eval set and its own scorer, shared by the study scripts: where the data
sits (../shared/routing-eval beside the repository, or $ROUTING_EVAL), its rows, and
score.py's `evaluate` (APGR, CPT(50%), CPT(80%)) imported rather than re-implemented.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL_DIR = os.environ.get("ROUTING_EVAL") or os.path.join(HERE, "..", "..", "..", "shared", "routing-eval")
EVAL = os.path.join(EVAL_DIR, "mmlu.jsonl")
SCORER = os.path.join(EVAL_DIR, "score.py")
sys.path.insert(0, EVAL_DIR)
import score  # noqa: E402


def rows():
    return [json.loads(line) for line in open(EVAL) if line.strip()]


def evaluate(rows, scores):
    """score.py's figures for one score per row (higher = send to the strong model)."""
    return score.evaluate(rows, [float(s) for s in scores])
