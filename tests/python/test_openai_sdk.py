"""The official openai SDK through Switchyard, both ways in: base URL and HTTP_PROXY."""
import httpx
import openai
import pytest
from openai import OpenAI

MESSAGES = [{"role": "user", "content": "Say hello."}]


def base_url_client(stack):
    return OpenAI(base_url=f"http://127.0.0.1:{stack.proxy_port}/v1", api_key="sk-app-placeholder")


def forward_proxy_client(stack):
    # What HTTP_PROXY does: the SDK keeps talking to api.openai.com, over the sidecar.
    http = httpx.Client(proxy=f"http://127.0.0.1:{stack.proxy_port}")
    return OpenAI(base_url="http://api.openai.com/v1", api_key="sk-app-placeholder", http_client=http)


@pytest.mark.parametrize("make_client", [base_url_client, forward_proxy_client])
def test_chat_completion(stack, make_client):
    client = make_client(stack)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-switchyard-route"] == "chat"
    completion = raw.parse()
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].message.content.startswith("Hello")
    assert completion.usage.completion_tokens == 6
    seen = stack.upstream_requests()[-1]
    assert seen["model"] == "gpt-4o-mini-2024-07-18"
    assert seen["headers"]["authorization"] == "Bearer sk-injected-by-switchyard"
    assert "openai" in seen["headers"]["user-agent"].lower()


@pytest.mark.parametrize("make_client", [base_url_client, forward_proxy_client])
def test_streaming(stack, make_client):
    client = make_client(stack)
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from the Switchyard mock upstream"
    assert usage is not None and usage.completion_tokens == 6
    assert stack.upstream_requests()[-1]["stream"] is True


def test_errors_surface_as_sdk_exceptions(stack):
    client = base_url_client(stack)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    proxied = forward_proxy_client(stack)
    bad = OpenAI(base_url="http://evil.example.com/v1", api_key="x",
                 http_client=proxied._client, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.code == "host_not_allowed"


def test_plain_stream_never_shows_the_usage_chunk(stack):
    # The sidecar asks the upstream for usage to account the stream; a client that did not
    # ask must not get the extra choices-less chunk.
    chunks = list(base_url_client(stack).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True))
    assert chunks and all(c.choices for c in chunks)
    assert stack.upstream_requests()[-1]["body"]["stream_options"] == {"include_usage": True}
