"""The official openai SDK's calls through a sidecar show up in the collector's /v1/usage
with exactly the tokens the provider reported and exactly their cost at list price."""
import json
from decimal import Decimal

from openai import OpenAI

from conftest import ADMIN_TOKEN

MESSAGES = [{"role": "user", "content": "Say hello in a few words."}]
# USD per million tokens, as in the policy.
PRICES = {"gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
          "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
          "text-embedding-3-small": (Decimal("0.02"), Decimal("0"))}


def test_sdk_usage_reaches_the_collector_exactly(collector_stack):
    s = collector_stack
    client = OpenAI(base_url=f"http://127.0.0.1:{s.proxy_port}/v1", api_key="sk-app-placeholder")
    seen = {}  # model -> [requests, input, output]

    def count(model, usage_in, usage_out):
        row = seen.setdefault(model, [0, 0, 0])
        row[0] += 1
        row[1] += usage_in
        row[2] += usage_out

    for model in ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]:
        c = client.chat.completions.create(model=model, messages=MESSAGES)
        count(model, c.usage.prompt_tokens, c.usage.completion_tokens)
    for model in ["gpt-4o", "gpt-4o-mini"]:
        stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True})
        usage = [chunk.usage for chunk in stream if chunk.usage][-1]
        count(model, usage.prompt_tokens, usage.completion_tokens)
    e = client.embeddings.create(model="text-embedding-3-small", input=["one", "two words"])
    count("text-embedding-3-small", e.usage.prompt_tokens, 0)

    total = sum(r[0] for r in seen.values())
    s.wait_requests(total)
    body = s.collector_get("/v1/usage?from=1d&group_by=model")
    rows = {r["model"]: r for r in json.loads(body, parse_float=Decimal)["rows"]}
    assert set(rows) == set(seen)
    for model, (n, tin, tout) in seen.items():
        r = rows[model]
        assert (r["requests"], r["input_tokens"], r["output_tokens"]) == (n, tin, tout), model
        pin, pout = PRICES[model]
        expected = (pin * tin + pout * tout) / Decimal(1_000_000)
        assert r["cost_usd"] == expected, (model, r["cost_usd"], expected)
        assert r["errors"] == 0
    # The same through the team's budget view.
    budgets = json.loads(s.collector_get("/v1/budgets"), parse_float=Decimal)["levels"]
    spend = sum((PRICES[m][0] * v[1] + PRICES[m][1] * v[2]) / Decimal(1_000_000)
                for m, v in seen.items())
    assert (budgets[0]["level"], budgets[0]["name"]) == ("team", "research")
    assert budgets[0]["spend_usd"] == spend
    assert budgets[0]["remaining_usd"] == Decimal(50) - spend
