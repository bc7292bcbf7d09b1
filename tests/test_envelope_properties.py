"""Property tests for the three parsing steps of a signed body (``service.core.events``).

bytes -> JSON object (``InvalidJSON``), object -> envelope (``ValidationError``), envelope -> typed event
(``ValidationError``). Each step is total on untrusted input: it returns its typed result or raises its
one documented error, never anything else. The signature header parser has its own properties in
test_signature_properties.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from runinfra_webhooks.service.core.events import (
    CATALOGUE,
    MAX_CREATED,
    DeploymentInfo,
    Envelope,
    InvalidJSON,
    parse_envelope,
    parse_event,
    parse_event_json,
    parse_json_object,
)
from tests.builders import example_event

ID_RULE = re.compile(r"[\x21-\x7e]{1,255}")
TYPE_RULE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
ENVELOPE_FIELDS = {"id", "type", "created", "data", "object", "api_version", "workspace_id"}
CATALOGUED = sorted(CATALOGUE)

# Text that includes what JSON can carry but hypothesis leaves out by default: lone surrogates, NUL.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["", "\x00", "\ud800", "\udcff", "\ufeff", "evt_1", "deployment.ready", "a.b", " ", "\u2028"]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(any_text, json_values, max_size=6)
small_text = st.text(st.characters(max_codepoint=0x17F, exclude_categories=["Cs"]), max_size=12)


def _json_bytes(value: Any) -> bytes:
    """Standard JSON text, UTF-8; lone surrogates survive as \\u escapes (ensure_ascii)."""
    return json.dumps(value).encode()


# Bytes biased towards almost-JSON so the fuzzer gets past the first character.
almost_json = st.one_of(
    st.binary(max_size=300),
    json_values.map(_json_bytes),
    json_objects.map(_json_bytes),
    st.tuples(json_objects.map(_json_bytes), st.integers(0, 300), st.binary(max_size=4)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]  # splice junk into valid JSON
    ),
    st.tuples(st.sampled_from("[{"), st.integers(0, 5000)).map(
        lambda t: (t[0] * t[1]).encode()  # unterminated nesting, deep enough to hit the recursion limit
    ),
    st.integers(1, 6000).map(lambda n: b'{"created": 1' + b"0" * n + b"}"),  # ints past the digit limit
    st.sampled_from([b"NaN", b'{"a": NaN}', b'{"a": -Infinity}', b"\xef\xbb\xbf{}", b'{"a": "\xed\xa0\x80"}',
                     b"{}\x00", b'{"a": "\x00"}', b"\xff\xfe{\x00}\x00", b"", b"   ", b"null", b"[]"]),
)


def valid_envelope(type_: str) -> dict[str, Any]:
    return example_event(type_) if type_ in CATALOGUE else {"id": "evt_x", "type": type_, "created": 1, "data": {}}


# --- bytes -> JSON object --------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(almost_json)
@example(b"[" * 100_000)
@example(b'{"a":' + b"[" * 990 + b"]" * 990 + b"}")
@example(b"1" * 5000)
@example("\ud800".encode("utf-8", "surrogatepass"))
def test_parse_json_object_is_total(body: bytes) -> None:
    """Any bytes give a dict or InvalidJSON; RecursionError, UnicodeDecodeError, ValueError never escape."""
    try:
        value = parse_json_object(body)
    except InvalidJSON as exc:
        assert len(str(exc)) <= 200
        return
    assert isinstance(value, dict)


def _careful_event(body: bytes) -> Envelope | None:
    """The careful path: JSON object, then the typed event; None where it refuses."""
    try:
        return parse_event(parse_json_object(body))
    except (InvalidJSON, ValidationError):
        return None


def _mutated_event(t: tuple[str, str, Any, int, bytes]) -> bytes:
    """A catalogued example with one field of it (or of its data) replaced, then maybe junk spliced in."""
    type_, field, value, at, junk = t
    event = example_event(type_)
    target = event["data"] if field.startswith("data.") else event
    target[field.removeprefix("data.")] = value
    body = _json_bytes(event)
    return body[:at] + junk + body[at:] if junk else body


near_events = st.tuples(
    st.sampled_from(CATALOGUED),
    st.sampled_from(["id", "type", "created", "data", "data.deployment_id", "data.pipeline_id", "data.model",
                     "data.text", "data.operations", "data.duration_seconds", "data.error", "extra"]),
    json_values | st.sampled_from([float("nan"), float("inf"), 10**30, "\ud800", 1.0, True, "1"]),
    st.integers(0, 400),
    st.sampled_from([b"", b"\x00", b"NaN", b" ", b",", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"}"]),
)


@settings(max_examples=400, deadline=None)
@given(almost_json | near_events.map(_mutated_event))
@example(b'{"id":"evt_1","type":"deployment.deleted","created":1,"data":{"deployment_id":"d","pipeline_id":"p",'
         b'"x":NaN}}')
@example(b'{"id":"evt_1","type":"deployment.deleted","created":1,"data":{"deployment_id":"d","pipeline_id":"p",'
         b'"x":"\\ud800"}}')
def test_the_quick_parse_accepts_exactly_the_events_the_careful_path_accepts(body: bytes) -> None:
    """What ``parse_event_json`` (pydantic's JSON parser on the bytes) accepts, the careful path accepts as the
    same event; where the careful path refuses, so does it. (It may hand an odd valid body, say with a lone
    surrogate in an ignored field, to the careful path: that only costs time.)"""
    careful = _careful_event(body)
    quick = parse_event_json(body)
    assert quick is None or quick == careful
    if careful is None:
        assert quick is None


@pytest.mark.parametrize("type_", CATALOGUED)
def test_every_catalogued_example_takes_the_quick_parse(type_: str) -> None:
    event = parse_event_json(_json_bytes(example_event(type_)))
    assert event is not None and event.type == type_


@settings(max_examples=300, deadline=None)
@given(json_objects)
def test_any_json_object_round_trips(obj: dict[str, Any]) -> None:
    """Standard JSON text of an object parses back to an equal dict (indentation and spacing aside)."""
    assert parse_json_object(_json_bytes(obj)) == obj
    assert parse_json_object(json.dumps(obj, indent="\t", separators=(" , ", " : ")).encode()) == obj


@settings(max_examples=200, deadline=None)
@given(json_values.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object_is_invalid(value: Any) -> None:
    """Arrays, strings, numbers, true/false/null at the top level are InvalidJSON, not a crash later."""
    with pytest.raises(InvalidJSON):
        parse_json_object(_json_bytes(value))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    st.dictionaries(small_text, st.one_of(small_text, st.integers(), st.booleans()), min_size=1, max_size=4),
    st.sampled_from(["latin-1", "utf-16", "utf-32", "cp1252"]),
)
@example({"\u00c2\u0080": ""}, "latin-1")  # bytes C2 80: valid UTF-8 too, for U+0080
def test_other_encodings_are_invalid_json_unless_their_bytes_are_also_utf8(obj: dict[str, Any], codec: str) -> None:
    """The body is read as UTF-8: other encodings are rejected, unless their bytes happen to be UTF-8 too."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        body = text.encode(codec)
    except UnicodeEncodeError:
        assume(False)
        return
    try:
        as_utf8 = body.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(InvalidJSON):
            parse_json_object(body)
    else:
        assert parse_json_object(body) == json.loads(as_utf8)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_constants_are_invalid(constant: str) -> None:
    """NaN, Infinity and -Infinity are not JSON: the body is InvalidJSON."""
    with pytest.raises(InvalidJSON):
        parse_json_object(f'{{"id": "a", "created": {constant}}}'.encode())


# --- object -> envelope ----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.one_of(
    json_objects,
    st.builds(lambda base, extra: {**base, **extra},
              st.sampled_from([*CATALOGUED, "x.y"]).map(valid_envelope), json_objects),
    st.builds(lambda base, field, value: {**base, field: value},
              st.sampled_from(CATALOGUED).map(valid_envelope), st.sampled_from(sorted(ENVELOPE_FIELDS)),
              json_values),
))
def test_parse_envelope_and_event_are_total(obj: dict[str, Any]) -> None:
    """Any JSON object gives an Envelope or ValidationError, and a typed event or ValidationError."""
    try:
        envelope = parse_envelope(obj)
    except ValidationError:
        envelope = None
    if envelope is not None:
        assert ID_RULE.fullmatch(envelope.id) and TYPE_RULE.fullmatch(envelope.type)
        assert type(envelope.created) is int and envelope.created >= 0
    try:
        event = parse_event(obj)
    except ValidationError:
        return
    assert envelope is not None, "a typed event must also be a valid envelope"
    assert event.type in CATALOGUE and event.id == envelope.id


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([*CATALOGUED, "x.unknown", "billing.invoice.paid"]),
    st.dictionaries(any_text.filter(lambda k: k not in ENVELOPE_FIELDS), json_values, max_size=8),
    st.dictionaries(any_text, json_values, max_size=8),
)
def test_valid_envelopes_with_random_extra_fields_are_always_accepted(
    type_: str, extra_top: dict[str, Any], extra_data: dict[str, Any]
) -> None:
    """Unknown fields, at the top level and inside data, are ignored and never rejected."""
    base = valid_envelope(type_)
    obj = {**extra_top, **base}
    obj["data"] = {**extra_data, **base["data"]}
    envelope = parse_envelope(obj)
    assert (envelope.id, envelope.type, envelope.created) == (base["id"], base["type"], base["created"])
    if type_ in CATALOGUE:
        event = parse_event(obj)
        known = set(type(event.data).model_fields)
        assert event.data.model_dump(exclude_none=True) == {k: v for k, v in base["data"].items() if k in known}
    else:
        with pytest.raises(ValidationError):
            parse_event(obj)


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7f), min_size=250,
                                    max_size=260)))
def test_id_accepted_exactly_when_printable_ascii_without_whitespace(event_id: str) -> None:
    """An id is accepted exactly when it is 1 to 255 printable ASCII characters without whitespace."""
    obj = {**valid_envelope("deployment.deleted"), "id": event_id}
    accepted = _accepted(obj)
    assert accepted == bool(ID_RULE.fullmatch(event_id))


@settings(max_examples=150, deadline=None)
@given(st.one_of(any_text, st.from_regex(TYPE_RULE, fullmatch=True).filter(lambda s: len(s) <= 300)))
def test_type_accepted_exactly_when_dotted_lowercase_words(type_: str) -> None:
    """A type is accepted exactly when it is dotted lowercase words, at most 255 characters long."""
    obj = {"id": "evt_1", "type": type_, "created": 1, "data": {}}
    assert _accepted(obj) == (bool(TYPE_RULE.fullmatch(type_)) and len(type_) <= 255)


@settings(max_examples=300, deadline=None)
@given(json_values | st.integers() | st.just(True) | st.just(1.0) | st.just("1"))
def test_created_accepted_exactly_when_a_non_negative_integer(created: Any) -> None:
    """No coercion: 1.0, "1" and true are not integers (a bool is not an int on the wire); at most 12 digits."""
    obj = {**valid_envelope("deployment.deleted"), "created": created}
    assert _accepted(obj) == (type(created) is int and 0 <= created <= MAX_CREATED)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_data_accepted_exactly_when_an_object(data: Any) -> None:
    """data is accepted exactly when it is a JSON object."""
    obj = {"id": "evt_1", "type": "x.y", "created": 1, "data": data}
    assert _accepted(obj) == isinstance(data, dict)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(ENVELOPE_FIELDS)))
def test_a_missing_required_field_is_rejected_an_optional_one_is_not(field: str) -> None:
    """Without id, type, created or data the envelope is rejected; without any other field it is not."""
    obj = valid_envelope("deployment.ready")
    obj.pop(field, None)
    assert _accepted(obj) == (field not in {"id", "type", "created", "data"})


def _accepted(obj: dict[str, Any]) -> bool:
    try:
        assert isinstance(parse_envelope(obj), Envelope)
    except ValidationError:
        return False
    return True


# --- envelope -> typed event -----------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CATALOGUED), st.data())
def test_a_catalogued_event_missing_or_mistyping_a_data_field_is_a_validation_error(
    type_: str, data: st.DataObject
) -> None:
    """Such a delivery is still a valid envelope (so the receiver dead-letters it instead of a 400)."""
    obj = example_event(type_)
    required = [k for k, f in type(parse_event(obj).data).model_fields.items() if f.is_required()]
    field = data.draw(st.sampled_from(required), label="field")
    if data.draw(st.booleans(), label="drop"):
        del obj["data"][field]
    else:
        obj["data"][field] = data.draw(st.one_of(st.none(), st.integers(), st.lists(st.integers(), min_size=1)),
                                       label="wrong value")
    parse_envelope(obj)
    with pytest.raises(ValidationError):
        parse_event(obj)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CATALOGUED), st.data())
def test_every_string_of_a_typed_event_can_be_encoded_as_utf8(type_: str, data: st.DataObject) -> None:
    """What a handler gets can always be sent on (Redis, the gateway): a lone surrogate fails the model."""
    obj = example_event(type_)
    for name, value in list(obj["data"].items()):
        if isinstance(value, str):
            obj["data"][name] = data.draw(any_text, label=name)
        elif isinstance(value, list):
            obj["data"][name] = data.draw(st.lists(any_text, max_size=3), label=name)
        elif isinstance(value, dict):
            obj["data"][name] = {k: data.draw(any_text, label=f"{name}.{k}") for k in value}
    try:
        event = parse_event(obj)
    except ValidationError:
        assert any(_has_surrogate(v) for v in json.loads(json.dumps(obj["data"])).values())
        return
    json.dumps(event.data.model_dump(), ensure_ascii=False).encode("utf-8")


def _has_surrogate(value: Any) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([t for t in CATALOGUED if t.startswith("deployment.") and t != "deployment.deleted"]),
       st.text(max_size=40))  # any Unicode text (a lone surrogate is not text; see above)
def test_an_unknown_modality_is_kept_never_rejected(type_: str, modality: str) -> None:
    """Any text as a deployment's modality parses, and the event keeps it unchanged."""
    obj = example_event(type_)
    obj["data"]["modality"] = modality
    data = parse_event(obj).data
    assert isinstance(data, DeploymentInfo)
    assert data.modality == modality


@settings(max_examples=300, deadline=None)
@given(almost_json)
def test_the_receiver_classification_of_any_signed_body_is_total(body: bytes) -> None:
    """What the receiver does after the signature: exactly one of its five answers for any bytes."""
    assert _classify(body) in {"invalid_json", "invalid_event", "ignored", "dead_lettered", "queued"}


def _classify(body: bytes) -> str:
    try:
        obj = parse_json_object(body)
    except InvalidJSON:
        return "invalid_json"
    try:
        envelope = parse_envelope(obj)
    except ValidationError:
        return "invalid_event"
    if envelope.type not in CATALOGUE:
        return "ignored"
    try:
        parse_event(obj)
    except ValidationError:
        return "dead_lettered"
    return "queued"
