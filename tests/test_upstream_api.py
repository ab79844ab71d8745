"""The offline upstream's API beyond plain chat: tool calls, structured outputs, embeddings,
moderations, `n` choices, the Responses API streamed, stored and counted, the headers the real API
sends, and clear 400s for what it cannot honour. Each runs through the in-process mock and through
the TCP fake server: one brain, two bodies."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any, Literal, cast

import jsonschema
import openai
import pytest
from openai import OpenAI
from openai.lib._pydantic import to_strict_json_schema
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionToolMessageParam,
)
from pydantic import BaseModel, Field

import labsupport
from labsupport import FakeServer, RateLimit, mock_openai
from labsupport.upstream import core


@pytest.fixture(params=["mock", "fake_server"])
def upstream(request: pytest.FixtureRequest) -> Iterator[labsupport.Upstream]:
    body: Any = mock_openai(latency=0.0) if request.param == "mock" else FakeServer(latency=0.0)
    with body as running:
        yield running


@pytest.fixture
def client(upstream: labsupport.Upstream) -> Iterator[OpenAI]:
    base_url = upstream.base_url if isinstance(upstream, FakeServer) else None
    with OpenAI(api_key="test-key", base_url=base_url, max_retries=0) as sdk:
        yield sdk


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def status_counts(upstream: labsupport.Upstream) -> dict[int | None, int]:
    if isinstance(upstream, FakeServer):
        upstream.wait_idle()
    return upstream.stats.status_counts


class Weather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": Weather.model_json_schema(),
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Tell the time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}


# -- tool calls -------------------------------------------------------------------------------


def test_auto_calls_the_tool_the_prompt_is_about_with_valid_arguments(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("What is the weather in Paris, in celsius?"),
        tools=[TIME_TOOL, WEATHER_TOOL],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, Weather.model_json_schema())
    assert arguments == {"city": "Paris", "unit": "celsius"}


def test_tool_choice_none_auto_without_a_match_required_and_named(client: OpenAI) -> None:
    def create(text: str, **options: Any) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=ask(text), tools=[WEATHER_TOOL, TIME_TOOL], **options
        ).choices[0]

    assert create("Weather in Rome?", tool_choice="none").message.tool_calls is None
    assert create("Tell me a joke").message.tool_calls is None  # auto, nothing fits: text
    required = create("Tell me a joke", tool_choice="required")
    assert required.finish_reason == "tool_calls" and required.message.tool_calls
    named = create(
        "Weather in Rome?", tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert named.finish_reason == "stop"  # a forced function stops, as the real API does
    assert [c.function.name for c in named.message.tool_calls or []] == ["get_time"]


def test_strict_pydantic_tools_parse_and_the_next_turn_answers_from_the_result(
    client: OpenAI,
) -> None:
    tools = [openai.pydantic_function_tool(Weather, name="get_weather", description="Weather")]
    messages = ask("What's the weather in Oslo, in fahrenheit?")
    first = client.chat.completions.parse(model="gpt-4o-mini", messages=messages, tools=tools)
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.parsed_arguments == Weather(city="Oslo", unit="fahrenheit")
    result: ChatCompletionToolMessageParam = {
        "role": "tool",
        "tool_call_id": call.id,
        "content": '{"temperature": 41}',
    }
    # The SDK's message as the JSON it came as: an assistant message param, field for field.
    assistant = cast(
        ChatCompletionAssistantMessageParam,
        first.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}),
    )
    second = client.chat.completions.create(
        model="gpt-4o-mini", messages=[*messages, assistant, result], tools=tools
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "According to get_weather: temperature 41."


def test_streamed_tool_call_deltas_add_up_to_the_same_call(client: OpenAI) -> None:
    options: Any = {"model": "gpt-4o-mini", "messages": ask("Weather in Lima?")}
    whole = client.chat.completions.create(**options, tools=[WEATHER_TOOL])
    chunks = list(client.chat.completions.create(**options, tools=[WEATHER_TOOL], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) > 2  # the name first, then the arguments in pieces
    first = (deltas[0].tool_calls or [])[0]
    arguments = "".join((d.tool_calls or [])[0].function.arguments or "" for d in deltas)
    expected = (whole.choices[0].message.tool_calls or [])[0].function
    assert first.function is not None and first.function.name == expected.name
    assert arguments == expected.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(**options, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    assert (final.choices[0].message.tool_calls or [])[0].function.arguments == arguments


# -- structured outputs -------------------------------------------------------------------------


class Address(BaseModel):
    city: str
    postcode: str = Field(min_length=4, max_length=8)


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    score: float = Field(gt=0, lt=1)
    email: str
    nicknames: list[str] = Field(min_length=2, max_length=3)
    home: Address
    work: Address | None
    pet: Literal["cat", "dog", "fish"]


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    summary: str
    topics: list[str]


@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_answers_are_valid_instances_built_from_the_prompt(
    client: OpenAI, strict: bool
) -> None:
    schema = to_strict_json_schema(Person) if strict else Person.model_json_schema()
    assert "$defs" in schema and any("$ref" in json.dumps(v) for v in schema["properties"].values())
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("Alice is 34, lives in Bergen and has a dog."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Person", "schema": schema, "strict": strict},
        },
    )
    person = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(person, schema)
    assert (person["name"], person["age"], person["home"]["city"], person["pet"]) == (
        "Alice",
        34,
        "Bergen",
        "dog",
    )


def test_a_sentiment_enum_gets_the_prompts_sentiment(client: OpenAI) -> None:
    def sentiment(text: str) -> str:
        parsed = (
            client.chat.completions.parse(
                model="gpt-4o-mini", messages=ask(text), response_format=Review
            )
            .choices[0]
            .message.parsed
        )
        assert parsed is not None
        return parsed.sentiment

    assert sentiment("The food was great and the staff were helpful.") == "positive"
    assert sentiment("Slow service and a terrible, broken app.") == "negative"
    assert sentiment("The shop opens at nine.") == "neutral"


def test_json_object_mode_answers_json_and_needs_the_word_json(
    client: OpenAI, upstream: labsupport.Upstream
) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("Reply in JSON: what is asyncio?"),
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=ask("hi"), response_format={"type": "json_object"}
        )
    assert status_counts(upstream) == {200: 1, 400: 1}


def test_parse_and_stream_forms_return_parsed_objects(client: OpenAI) -> None:
    prompt = "I love this fast, reliable library."
    chat = client.chat.completions.parse(
        model="gpt-4o-mini", messages=ask(prompt), response_format=Review
    )
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=ask(prompt), response_format=Review
    ) as stream:
        streamed = stream.get_final_completion()
    responses = client.responses.parse(model="gpt-4o-mini", input=prompt, text_format=Review)
    with client.responses.stream(model="gpt-4o-mini", input=prompt, text_format=Review) as events:
        final = events.get_final_response()
    parsed = [
        chat.choices[0].message.parsed,
        streamed.choices[0].message.parsed,
        responses.output_parsed,
        final.output_parsed,
    ]
    assert all(isinstance(p, Review) and p.sentiment == "positive" for p in parsed)
    assert len({p.model_dump_json() for p in parsed if p}) == 1


def test_max_tokens_cuts_structured_output_short_as_the_real_api_does(client: OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="gpt-4o-mini", messages=ask("Great!"), response_format=Review, max_tokens=3
        )


# -- responses: tools, streaming, storage, token counts ------------------------------------------


def test_responses_function_calls_and_their_results(client: OpenAI) -> None:
    tool: Any = {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": to_strict_json_schema(Weather),
        "strict": True,
    }
    first = client.responses.create(model="gpt-4o-mini", input="Weather in Quito?", tools=[tool])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments)["city"] == "Quito"
    follow_up: Any = [
        {"role": "user", "content": "Weather in Quito?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 19 °C"},
    ]
    second = client.responses.create(model="gpt-4o-mini", input=follow_up, tools=[tool])
    assert second.output_text == "According to get_weather: sunny, 19 °C."


def test_responses_stream_with_the_sdks_event_types(client: OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o-mini", input="Hello there", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    plain = client.responses.create(model="gpt-4o-mini", input="Hello there")
    assert text == plain.output_text == events[-1].response.output_text  # type: ignore[union-attr]


def test_responses_stream_function_call_arguments_in_pieces(client: OpenAI) -> None:
    tool: Any = {
        "type": "function",
        "name": "get_weather",
        "parameters": Weather.model_json_schema(),
    }
    whole = client.responses.create(model="gpt-4o-mini", input="Weather in Cusco?", tools=[tool])
    with client.responses.stream(
        model="gpt-4o-mini", input="Weather in Cusco?", tools=[tool]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (call,) = final.output
    assert call.type == "function_call" and len(deltas) > 1
    assert "".join(deltas) == call.arguments == whole.output[0].arguments  # type: ignore[union-attr]


def test_stored_responses_can_be_retrieved_the_last_thousand(
    client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "STORED_RESPONSES", 2)
    ids = [client.responses.create(model="gpt-4o-mini", input=f"Q{i}").id for i in range(3)]
    unstored = client.responses.create(model="gpt-4o-mini", input="Q", store=False)
    assert client.responses.retrieve(ids[2]).output_text.startswith("Here is a short answer")
    assert client.responses.retrieve(ids[1]).id == ids[1]
    for gone in (ids[0], unstored.id):  # evicted (only the last 2 kept), never stored
        with pytest.raises(openai.NotFoundError, match=f"Response with id '{gone}' not found"):
            client.responses.retrieve(gone)
    assert core.STORED_RESPONSES == 2 and labsupport.upstream.core is core


def test_input_tokens_counts_what_usage_reports(client: OpenAI) -> None:
    text = "Summarize in 5 words: The loop runs one task at a time."
    counted = client.responses.input_tokens.count(model="gpt-4o-mini", input=text)
    used = client.responses.create(model="gpt-4o-mini", input=text).usage
    assert used is not None and counted.input_tokens == used.input_tokens


# -- n choices, embeddings, moderations -------------------------------------------------------


def test_n_choices_plain_and_streamed(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"), n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None and reply.usage.completion_tokens % 3 == 0
    chunks = client.chat.completions.create(
        model="gpt-4o-mini", messages=ask("hi"), n=2, stream=True
    )
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [reply.choices[0].message.content] * 2
    with pytest.raises(openai.BadRequestError, match="'n' must be an integer from 1 to 128"):
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"), n=0)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_deterministic_unit_vectors_and_similar_texts_are_closer(
    client: OpenAI,
) -> None:
    texts = ["The cat sat on the mat.", "A cat sat on a mat.", "Quarterly revenue grew 4%."]
    first = client.embeddings.create(model="text-embedding-3-small", input=texts)
    again = client.embeddings.create(model="text-embedding-3-small", input=texts)
    vectors = [d.embedding for d in first.data]
    assert [d.index for d in first.data] == [0, 1, 2] and len(vectors[0]) == 1536
    assert vectors == [d.embedding for d in again.data]
    assert all(math.isclose(cosine(v, v), 1.0, rel_tol=1e-5) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > 0.5 > 0.1 > cosine(vectors[0], vectors[2])
    small = client.embeddings.create(model="text-embedding-3-large", input="cat", dimensions=256)
    assert len(small.data[0].embedding) == 256
    assert first.usage.prompt_tokens > 0


def test_embeddings_come_as_base64_unless_floats_are_asked_for(client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="cat")
    encoded = json.loads(raw.http_response.content)["data"][0]["embedding"]
    assert isinstance(encoded, str) and len(base64.b64decode(encoded)) == 1536 * 4  # float32s
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="cat", encoding_format="float"
    )
    assert raw.parse().data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)


def test_moderations_flag_a_threat_and_pass_a_clean_text(client: OpenAI) -> None:
    result = client.moderations.create(input=["I will kill you", "Kill the stuck process"])
    threat, clean = result.results
    assert threat.flagged and threat.categories.violence
    assert threat.categories.harassment_threatening
    assert not clean.flagged and not any(clean.categories.model_dump().values())


# -- headers ----------------------------------------------------------------------------------


def test_each_answer_has_a_request_id_and_rate_limit_headers(
    client: OpenAI, upstream: labsupport.Upstream
) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
    second = client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
    assert first._request_id and second._request_id
    assert first._request_id != second._request_id
    status_counts(upstream)  # the fake server records a call just after sending it: let it
    upstream.configure(rate_limit=RateLimit(max_per_window=3, window=60))
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=ask("hi")
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.request_id


# -- bad input: a clear 400, never prose pretending to comply -------------------------------


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "unsupported keyword",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "Code",
                    "schema": {"type": "object", "properties": {"c": {"pattern": "^[A-Z]$"}}},
                },
            }
        },
        "uses 'pattern' at properties/c, which the offline lab upstream does not support",
    ),
    (
        "tool schema that is not JSON Schema",
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}
            ]
        },
        "function 'f' is not valid JSON Schema",
    ),
    (
        "strict schema left open",
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "strict": True,
                        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                }
            ]
        },
        "'additionalProperties' is required to be supplied and to be false",
    ),
    (
        "named tool not offered",
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        "names the function 'x', which is not in 'tools'",
    ),
    (
        "a reference outside the schema",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "R", "schema": {"$ref": "https://example.com/s.json"}},
            }
        },
        "resolves only references inside the schema",
    ),
    (
        "bounds no value fits",
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"n": {"type": "integer", "minimum": 8, "maximum": 7}},
                        },
                    },
                }
            ],
            "tool_choice": "required",
        },
        "cannot build an instance of the JSON Schema of function 'f': No integer lies",
    ),
]


@pytest.mark.parametrize(
    ("options", "message"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_what_the_upstream_cannot_honour_gets_a_400_that_names_it(
    client: OpenAI, upstream: labsupport.Upstream, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"), **options)
    assert message in refused.value.message
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == (
        "invalid_request_error"
    )
    assert status_counts(upstream) == {400: 1}


def test_other_bad_requests_get_a_400_that_names_the_problem(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="only allowed when 'tools' are specified"):
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"), tool_choice="auto")
    with pytest.raises(openai.BadRequestError, match="only function tools"):
        client.responses.create(model="gpt-4o-mini", input="hi", tools=[{"type": "web_search"}])
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        client.embeddings.create(model="text-embedding-ada-002", input="hi", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="'dimensions' must be an integer from 1"):
        client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=4096)
    with pytest.raises(openai.NotFoundError, match="has no POST /audio/speech"):
        client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi")
