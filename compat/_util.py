"""Helpers shared by the compat tests."""

from __future__ import annotations

import json
import time

import openai

TERMINAL = {"completed", "failed", "cancelled", "incomplete"}

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}

CHAT_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": WEATHER_TOOL["parameters"],
    },
}


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(1, n + 1))


def error_body(exc: openai.APIStatusError) -> dict:
    """The `error` object of an error response, checked against OpenAI's shape:
    {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}."""
    payload = exc.response.json()
    assert isinstance(payload, dict) and "error" in payload, f"no `error` object in {payload!r}"
    err = payload["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, f"error object lacks `{key}`: {err!r}"
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    # The SDK hands the same object to callers as `e.body`.
    assert exc.body == err, (exc.body, err)
    assert exc.message, "SDK error has no message"
    return err


def wait_terminal(client: openai.OpenAI, response_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        r = client.responses.retrieve(response_id)
        if r.status in TERMINAL:
            return r
        assert time.monotonic() < deadline, f"{response_id} still {r.status} after {timeout}s"
        time.sleep(0.2)


def items_of(response, type_: str) -> list:
    return [o for o in response.output if o.type == type_]


def message_texts(response) -> list[str]:
    """The output_text parts of every assistant message in the response output."""
    out = []
    for o in response.output:
        if o.type == "message":
            for c in o.content:
                if c.type == "output_text":
                    out.append(c.text)
    return out


def args_of(item) -> dict:
    return json.loads(item.arguments)


def raw_request(base_url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A plain HTTP request (no SDK), for what the SDK won't send. Returns (status, parsed JSON
    or None, raw text)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{base_url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return status, parsed, text
