"""The OpenAI Responses API through Switchyard with the official SDK: routed, model
rewritten, and metered exactly — tokens and cost in /metrics equal the usage the mock
reported, streamed or not, and a cut stream accounted from what was relayed."""
import time
from decimal import Decimal

import openai
import pytest
from openai import OpenAI

# gpt-4o-mini list price from conf/prices.yaml: $0.15 in, $0.60 out per million tokens.
IN, OUT = Decimal("0.15"), Decimal("0.60")
LABELS = 'model="gpt-4o-mini",provider="openai",team="default"'


def client(stack, **kw):
    return OpenAI(base_url=f"http://127.0.0.1:{stack.proxy_port}/v1", api_key="sk-app", **kw)


def tokens(stack, kind):
    return stack.metric('switchyard_tokens_total{%s,type="%s"}' % (LABELS, kind))


def cost(stack):
    return stack.metric("switchyard_cost_usd_total{%s}" % LABELS)


def settled(stack, requests):
    """Metrics are recorded when a request ends, a moment after the client has it."""
    for _ in range(200):
        done = stack.metric('switchyard_requests_total{model="gpt-4o-mini",provider="openai",route="chat",status="200"}')
        if done >= requests and stack.metric("switchyard_in_flight_requests") == 0:
            return
        time.sleep(0.01)
    raise AssertionError("requests never settled")


def test_responses_create_is_metered_exactly(stack):
    r = client(stack).responses.create(model="gpt-4o", input="Say hello.", instructions="Be brief.")
    assert r.output_text.startswith("Hello")
    assert r.model == "gpt-4o-mini-2024-07-18"
    seen = stack.upstream_requests()[-1]
    assert seen["path"] == "/v1/responses"
    assert seen["body"]["model"] == "gpt-4o-mini-2024-07-18"
    assert seen["headers"]["authorization"] == "Bearer sk-injected-by-switchyard"
    settled(stack, 1)
    assert tokens(stack, "input") == r.usage.input_tokens > 0
    assert tokens(stack, "output") == r.usage.output_tokens == 6
    usd = (r.usage.input_tokens * IN + r.usage.output_tokens * OUT) / 10**6
    assert abs(cost(stack) - float(usd)) < 1e-15


def test_streamed_responses_are_metered_from_response_completed(stack):
    stream = client(stack).responses.create(model="gpt-4o", input="Say hello.", stream=True)
    text, usage, kinds = "", None, []
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            usage = event.response.usage
    assert text == "Hello from the Switchyard mock upstream"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert usage is not None and usage.output_tokens == 6
    # The Responses API refuses stream_options.include_usage: it is never added.
    assert "stream_options" not in stack.upstream_requests()[-1]["body"]
    settled(stack, 1)
    assert tokens(stack, "input") == usage.input_tokens
    assert tokens(stack, "output") == usage.output_tokens
    usd = (usage.input_tokens * IN + usage.output_tokens * OUT) / 10**6
    assert abs(cost(stack) - float(usd)) < 1e-15


def test_a_cut_responses_stream_is_accounted_partial(stack):
    c = client(stack, max_retries=0)
    stream = c.responses.create(model="gpt-4o", input="Say hello.", stream=True,
                                extra_headers={"x-mock-drop-after": "6", "x-mock-chunk-delay-ms": "20"})
    deltas = 0
    with pytest.raises((openai.APIError, Exception)):
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas += 1
    # drop-after counts the events after the first: created, then in_progress, item
    # added, part added and three text deltas.
    assert deltas == 3
    for _ in range(200):
        if stack.metric('switchyard_partial_usage_total{model="gpt-4o-mini",provider="openai"}') == 1:
            break
        time.sleep(0.01)
    assert stack.metric('switchyard_partial_usage_total{model="gpt-4o-mini",provider="openai"}') == 1
    assert stack.metric('switchyard_streams_interrupted_total{side="upstream"}') == 1
    # No provider total came: the output is the deltas relayed.
    assert tokens(stack, "output") == deltas


def test_responses_to_a_translated_provider_is_a_clear_400(stack):
    with pytest.raises(openai.BadRequestError) as e:
        client(stack, max_retries=0).responses.create(model="claude-haiku", input="Say hello.")
    assert e.value.code == "invalid_request"
    assert "Responses API" in e.value.message and "anthropic" in e.value.message
    assert not [r for r in stack.upstream_requests() if r["path"] != "/mock/config"]
