"""The official SDKs work through the gateway unchanged, streaming included."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

CLEAN = "Tomatoes need sun, water and patience; stake them early."
LEAK = (
    "Let me explain slowly, in a rather long preamble, how this all works: "
    "the launch codes are 0000 and nobody should know them."
)


def oa_sync(proxy):
    return openai.OpenAI(base_url=str(proxy.make_url("/v1")), api_key="sk-client", max_retries=0)


_OPEN: list = []


@pytest.fixture(autouse=True)
async def _close_async_clients():
    yield
    while _OPEN:
        await _OPEN.pop().close()


def oa_async(proxy):
    client = openai.AsyncOpenAI(
        base_url=str(proxy.make_url("/v1")), api_key="sk-client", max_retries=0
    )
    _OPEN.append(client)
    return client


MSG = [{"role": "user", "content": "hello"}]


async def test_openai_sync_non_stream(make_gateway, fake):
    fake.script.text = CLEAN
    proxy, _, _ = await make_gateway(upstream=fake)
    client = oa_sync(proxy)
    completion = await asyncio.to_thread(
        client.chat.completions.create, model="gpt-test", messages=MSG
    )
    assert completion.choices[0].message.content == CLEAN
    assert completion.choices[0].finish_reason == "stop"
    assert fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-client"


async def test_openai_sync_stream_blocked(make_gateway, fake):
    fake.script.text = LEAK
    fake.script.chunk = 3
    proxy, _, _ = await make_gateway(upstream=fake)
    client = oa_sync(proxy)

    def consume():
        text, finish = [], None
        for chunk in client.chat.completions.create(model="gpt-test", messages=MSG, stream=True):
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        return "".join(text), finish

    text, finish = await asyncio.to_thread(consume)
    assert finish == "content_filter"
    assert "launch" not in text and LEAK.startswith(text)
    assert len(text) > 20


async def test_openai_async_non_stream_blocked(make_gateway, fake):
    fake.script.text = LEAK
    proxy, _, _ = await make_gateway(upstream=fake)
    completion = await oa_async(proxy).chat.completions.create(model="gpt-test", messages=MSG)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == "Blocked by policy."


async def test_openai_async_stream_clean_with_usage(make_gateway, fake):
    fake.script.text = CLEAN
    fake.script.extra = {"usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}}
    proxy, _, _ = await make_gateway(upstream=fake)
    stream = await oa_async(proxy).chat.completions.create(
        model="gpt-test", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    text, usage = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
        usage = chunk.usage or usage
    assert "".join(text) == CLEAN
    assert usage is not None and usage.total_tokens == 12


async def test_openai_n2_each_choice_scanned(make_gateway, fake):
    fake.script.text = CLEAN
    proxy, _, _ = await make_gateway(upstream=fake)
    completion = await oa_async(proxy).chat.completions.create(model="gpt-test", messages=MSG, n=2)
    assert [c.message.content for c in completion.choices] == [CLEAN, CLEAN]
    fake.script.chunk = 5
    stream = await oa_async(proxy).chat.completions.create(
        model="gpt-test", messages=MSG, n=2, stream=True
    )
    texts: dict[int, str] = {0: "", 1: ""}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: CLEAN, 1: CLEAN}


async def test_openai_tool_calls_pass_through(make_gateway, fake):
    fake.script.text = CLEAN
    fake.script.tool_call = True
    proxy, _, _ = await make_gateway(upstream=fake)
    completion = await oa_async(proxy).chat.completions.create(model="gpt-test", messages=MSG)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and call.function.arguments == '{"q": "x"}'
    stream = await oa_async(proxy).chat.completions.create(
        model="gpt-test", messages=MSG, stream=True
    )
    args, text = "", ""
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                args += tc.function.arguments or ""
    assert text == CLEAN and args == '{"q": "x"}'


async def test_openai_legacy_completions(make_gateway, fake):
    fake.script.text = LEAK
    proxy, _, _ = await make_gateway(upstream=fake)
    client = oa_async(proxy)
    done = await client.completions.create(model="gpt-test", prompt="hi")
    assert done.choices[0].finish_reason == "content_filter"
    fake.script.text = CLEAN
    stream = await client.completions.create(model="gpt-test", prompt="hi", stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == CLEAN


@pytest.mark.parametrize("text, blocked", [(CLEAN, False), (LEAK, True)])
async def test_openai_responses_api(make_gateway, fake, text, blocked):
    fake.script.text = text
    fake.script.chunk = 4
    proxy, _, _ = await make_gateway(upstream=fake)
    client = oa_async(proxy)
    response = await client.responses.create(model="gpt-test", input="hello")
    if blocked:
        assert response.status == "incomplete"
        assert response.incomplete_details.reason == "content_filter"
        assert "launch" not in response.output_text
    else:
        assert response.output_text == CLEAN
    stream = await client.responses.create(model="gpt-test", input="hello", stream=True)
    deltas, kinds, final = [], [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    streamed = "".join(deltas)
    if blocked:
        assert "launch" not in streamed and kinds[-1] == "response.incomplete"
        assert final.incomplete_details.reason == "content_filter"
    else:
        assert streamed == CLEAN and final.output_text == CLEAN
        assert kinds[-1] == "response.completed"


def an_sync(proxy):
    return anthropic.Anthropic(
        base_url=str(proxy.make_url("")), api_key="sk-ant-client", max_retries=0
    )


def an_async(proxy):
    client = anthropic.AsyncAnthropic(
        base_url=str(proxy.make_url("")), api_key="sk-ant-client", max_retries=0
    )
    _OPEN.append(client)
    return client


AMSG = {"model": "claude-test", "max_tokens": 100, "messages": MSG}


async def test_anthropic_sync_non_stream(make_gateway, fake):
    fake.script.text = CLEAN
    proxy, _, _ = await make_gateway(upstream=fake)
    message = await asyncio.to_thread(an_sync(proxy).messages.create, **AMSG)
    assert message.content[0].text == CLEAN and message.stop_reason == "end_turn"
    sent = fake.requests[-1]["headers"]
    # SDK versions differ in the header they use; the credential must arrive either way
    assert "sk-ant-client" in (sent.get("x-api-key", "") + sent.get("authorization", ""))


async def test_anthropic_async_blocked_and_streamed(make_gateway, fake):
    fake.script.text = LEAK
    fake.script.chunk = 2
    proxy, _, _ = await make_gateway(upstream=fake)
    client = an_async(proxy)
    message = await client.messages.create(**AMSG)
    assert message.stop_reason == "refusal"
    assert message.content[0].text == "Blocked by policy."
    async with client.messages.stream(**AMSG) as stream:
        pieces = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert final.stop_reason == "refusal"
    assert "launch" not in "".join(pieces) and len("".join(pieces)) > 20


async def test_anthropic_sync_stream_clean(make_gateway, fake):
    fake.script.text = CLEAN
    proxy, _, _ = await make_gateway(upstream=fake)

    def consume():
        with an_sync(proxy).messages.stream(**AMSG) as stream:
            return "".join(stream.text_stream), stream.get_final_message().stop_reason

    text, stop = await asyncio.to_thread(consume)
    assert text == CLEAN and stop == "end_turn"
