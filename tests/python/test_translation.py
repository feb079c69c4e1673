"""The official openai SDK routed to an Anthropic-format provider (the mock's /v1/messages):
translation both ways, streaming and not, tool calls, and token counts checked exactly
against what the upstream reported."""
import json
from decimal import Decimal

from openai import OpenAI

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def exact(usd: Decimal) -> str:
    """The proxy's exact decimal form of a cost: no exponent, no trailing zeros."""
    return format(usd.normalize(), "f")


def client(stack):
    return OpenAI(base_url=f"http://127.0.0.1:{stack.proxy_port}/v1", api_key="sk-app-placeholder")


def upstream_usage(stack, seen):
    """Replays the translated request to the mock without streaming: its usage is what
    the upstream reported for that exact request."""
    body = dict(seen["body"])
    body.pop("stream", None)
    direct = stack.mock_post("/v1/messages", body, {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    return direct["usage"]


def tokens(stack, kind):
    return stack.metric(
        'switchyard_tokens_total{model="claude-haiku",provider="claude",team="default",type="%s"}' % kind)


def test_chat_completion_via_anthropic(stack):
    c = client(stack)
    raw = c.chat.completions.with_raw_response.create(
        model="claude-haiku",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        temperature=0.5,
    )
    assert raw.headers["x-switchyard-provider"] == "claude"
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.model == "claude-3-5-haiku-20241022"
    assert r.choices[0].message.content.startswith("Hello from the Switchyard")
    assert r.choices[0].finish_reason == "stop"

    seen = stack.upstream_requests()[-1]
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == "sk-ant-injected-by-switchyard"
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["body"]["system"] == "Be brief."
    assert seen["body"]["max_tokens"] == 1024          # from the catalog entry
    assert seen["body"]["temperature"] == 0.5

    u = upstream_usage(stack, seen)
    assert r.usage.prompt_tokens == u["input_tokens"]
    assert r.usage.completion_tokens == u["output_tokens"]
    assert tokens(stack, "input") == u["input_tokens"]
    assert tokens(stack, "output") == u["output_tokens"]
    # claude-3-5-haiku list price from conf/prices.yaml: $0.80 in, $4.00 out per million.
    usd = (u["input_tokens"] * Decimal("0.80") + u["output_tokens"] * Decimal("4.00")) / 10**6
    assert raw.headers["x-switchyard-cost-usd"] == exact(usd)
    cost = stack.metric('switchyard_cost_usd_total{model="claude-haiku",provider="claude",team="default"}')
    assert abs(cost - float(usd)) < 1e-12


def test_streaming_tool_call_via_anthropic(stack):
    c = client(stack)
    stream = c.chat.completions.create(
        model="claude-haiku",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, args, name, finish, usage = "", "", None, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        text += d.content or ""
        for tc in d.tool_calls or []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text.startswith("Hello from the Switchyard")
    assert name == "get_weather"
    assert json.loads(args) == {"location": "Paris, France", "unit": "celsius"}
    assert finish == "tool_calls"

    seen = stack.upstream_requests()[-1]
    assert seen["body"]["stream"] is True
    assert seen["body"]["tools"][0]["name"] == "get_weather"
    u = upstream_usage(stack, seen)
    assert usage.prompt_tokens == u["input_tokens"]
    assert usage.completion_tokens == u["output_tokens"]
    assert tokens(stack, "output") == u["output_tokens"]


def test_non_streaming_tool_call_round_trip(stack):
    c = client(stack)
    r = c.chat.completions.create(
        model="claude-haiku",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    # Send the tool result back: it must arrive as an Anthropic tool_result block.
    r2 = c.chat.completions.create(
        model="claude-haiku",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"},
        ],
    )
    assert r2.choices[0].finish_reason == "stop"
    body = stack.upstream_requests()[-1]["body"]
    assert body["messages"][1]["content"][0]["type"] == "tool_use"
    assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}


def gemini_usage(stack, seen):
    """The mock's own answer to the translated request, without streaming."""
    model = seen["path"].split("/")[-1].split(":")[0]
    direct = stack.mock_post(f"/v1beta/models/{model}:generateContent", seen["body"], {"x-goog-api-key": "k"})
    return direct["usageMetadata"]


def test_chat_completion_via_gemini(stack):
    c = client(stack)
    raw = c.chat.completions.with_raw_response.create(
        model="gemini-flash",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        max_tokens=200,
    )
    r = raw.parse()
    assert raw.headers["x-switchyard-provider"] == "gem"
    assert r.model == "gemini-2.5-flash"
    assert r.choices[0].message.content.startswith("Hello from the Switchyard")
    seen = stack.upstream_requests()[-1]
    assert seen["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen["headers"]["x-goog-api-key"] == "gk-injected-by-switchyard"
    assert "authorization" not in seen["headers"]
    assert seen["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert seen["body"]["generationConfig"]["maxOutputTokens"] == 200
    u = gemini_usage(stack, seen)
    assert r.usage.prompt_tokens == u["promptTokenCount"]
    assert r.usage.completion_tokens == u["candidatesTokenCount"]
    # gemini-2.5-flash list price: $0.30 in, $2.50 out per million.
    usd = (u["promptTokenCount"] * Decimal("0.30") + u["candidatesTokenCount"] * Decimal("2.50")) / 10**6
    assert raw.headers["x-switchyard-cost-usd"] == exact(usd)


def test_streaming_via_gemini_with_tool_call(stack):
    c = client(stack)
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": "Say hello."}], stream=True)
        if ch.choices)
    assert text == "Hello from the Switchyard mock upstream"
    # (the mock refuses a stream without alt=sse)
    assert stack.upstream_requests()[-1]["path"].endswith(":streamGenerateContent")

    stream = c.chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True})
    name, args, finish, usage = None, "", None, None
    for ch in stream:
        usage = ch.usage or usage
        if not ch.choices:
            continue
        for tc in ch.choices[0].delta.tool_calls or []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"location": "Paris, France"}
    assert finish == "tool_calls"
    u = gemini_usage(stack, stack.upstream_requests()[-1])
    assert usage.prompt_tokens == u["promptTokenCount"]
    assert usage.completion_tokens == u["candidatesTokenCount"]
