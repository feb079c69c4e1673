"""The official anthropic SDK against /v1/messages: passthrough to an Anthropic-format
provider with the model and credentials rewritten, streamed and not, usage counted."""
import anthropic
import httpx
import pytest
from anthropic import Anthropic


def tokens(stack, kind):
    return stack.metric(
        'switchyard_tokens_total{model="claude-haiku",provider="claude",team="default",type="%s"}' % kind)


def test_messages_passthrough(stack):
    c = Anthropic(base_url=f"http://127.0.0.1:{stack.proxy_port}", api_key="sk-ant-app-placeholder")
    raw = c.messages.with_raw_response.create(
        model="claude-haiku", max_tokens=256, system="Be brief.",
        messages=[{"role": "user", "content": "Say hello."}])
    assert raw.headers["x-switchyard-provider"] == "claude"
    m = raw.parse()
    assert m.type == "message"
    assert m.model == "claude-3-5-haiku-20241022"
    assert m.content[0].text.startswith("Hello from the Switchyard")
    seen = stack.upstream_requests()[-1]
    assert seen["path"] == "/v1/messages"
    assert seen["body"]["model"] == "claude-3-5-haiku-20241022"
    assert seen["body"]["system"] == "Be brief."
    assert seen["headers"]["x-api-key"] == "sk-ant-injected-by-switchyard"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert tokens(stack, "input") == m.usage.input_tokens
    assert tokens(stack, "output") == m.usage.output_tokens


def test_messages_stream_with_tool_use(stack):
    c = Anthropic(base_url=f"http://127.0.0.1:{stack.proxy_port}", api_key="sk-ant-app-placeholder")
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
    with c.messages.stream(model="claude-haiku", max_tokens=256, tools=tools,
                           messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = [b for b in final.content if b.type == "tool_use"][0]
    assert tool.name == "get_weather" and tool.input == {"location": "Paris, France", "unit": "celsius"}
    assert tokens(stack, "output") == final.usage.output_tokens
    assert tokens(stack, "input") == final.usage.input_tokens


def test_forward_proxy_mode_and_errors_in_anthropic_shape(stack):
    # HTTP_PROXY mode: the SDK keeps api.anthropic.com, over plain HTTP to the sidecar.
    http = httpx.Client(proxy=f"http://127.0.0.1:{stack.proxy_port}")
    c = Anthropic(base_url="http://api.anthropic.com", api_key="x", http_client=http, max_retries=0)
    m = c.messages.create(model="claude-haiku", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="no-such-model", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["code"] == "model_not_found"
    assert e.value.body["error"]["type"] == "not_found_error"


def test_messages_translated_to_an_openai_format_provider(stack):
    c = Anthropic(base_url=f"http://127.0.0.1:{stack.proxy_port}", api_key="x")
    m = c.messages.create(model="gpt-4o", max_tokens=100, system="Be brief.",
                          messages=[{"role": "user", "content": "Say hello."}])
    assert m.type == "message" and m.stop_reason == "end_turn"
    assert m.content[0].text.startswith("Hello from the Switchyard")
    seen = stack.upstream_requests()[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert seen["headers"]["authorization"] == "Bearer sk-injected-by-switchyard"
    assert "x-api-key" not in seen["headers"]
    # The upstream's own count of the same request, asked directly.
    direct = stack.mock_post("/v1/chat/completions", {k: v for k, v in seen["body"].items() if k != "stream"})
    assert m.usage.input_tokens == direct["usage"]["prompt_tokens"]
    assert m.usage.output_tokens == direct["usage"]["completion_tokens"]

    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
    with c.messages.stream(model="gpt-4o", max_tokens=100, tools=tools,
                           messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = [b for b in final.content if b.type == "tool_use"][0]
    assert tool.name == "get_weather" and tool.input == {"location": "Paris, France"}
    assert final.usage.output_tokens > 0
