"""The chat completion request a specialist answers: OpenAI's shape, checked declaratively.

:func:`parse_chat` turns a request body into a :class:`ChatRequest` or raises a
:class:`ServeError` (400) naming the field (``param``, e.g. ``messages[1].content[0].type``),
in OpenAI's error body ``{"error": {"message", "type", "code", "param"}}``.

- ``messages``: roles ``system``, ``developer``, ``user``, ``assistant``, ``tool``; a
  ``content`` is a string or a list of content parts whose ``text`` parts are joined (with
  a newline); any other part (``image_url``, ``input_audio``, ``file``) is refused. The last
  user message is the specialist's input.
- Refused (400, code ``unsupported_parameter``): ``tools``/``functions`` (non-empty),
  ``tool_choice``/``function_call`` (other than ``"none"``), ``n`` other than 1,
  ``logprobs: true`` (and ``top_logprobs``), ``audio``, ``modalities`` other than
  ``["text"]``, non-zero ``frequency_penalty``/``presence_penalty``, a non-empty
  ``logit_bias``, ``stream_options`` without ``stream: true``, and a ``response_format``
  the task cannot honour (``text`` always; ``json_object``/``json_schema`` only when the
  task's output is json: :meth:`ChatRequest.check_output`).
- Ignored: ``store``, ``parallel_tool_calls``, ``service_tier``, ``reasoning_effort`` and
  ``verbosity`` (a specialist is not a reasoning model: the effort it spends is its
  training's), ``prediction``, and any field OpenAI adds later; ``metadata`` goes to the
  router.
- The request key the canary split hashes: ``safety_identifier``, else
  ``prompt_cache_key``, else ``user``, else a fresh id.
- ``stream_options.include_usage``: a streamed answer ends with a usage chunk.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from modelsmith.errors import ModelsmithError

#: Completion tokens when the request does not say, per output kind (as the eval uses).
DEFAULT_MAX_TOKENS = {"label": 4, "json": 256, "text": 128}
MAX_TOKENS = 1024
ROLES = ("system", "developer", "user", "assistant", "tool")


class ServeError(ModelsmithError):
    """A request the service cannot answer: the HTTP status, an OpenAI-style error body
    (``param`` names the field at fault), and any headers the answer needs (``Allow`` for
    a 405, ``Retry-After``)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code,
                          "param": self.param}}


def _unsupported(why: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", why)


class _Open(BaseModel):
    """Fields beyond the declared ones are allowed (and ignored)."""

    model_config = ConfigDict(extra="allow")


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None

    @field_validator("content")
    @classmethod
    def _text(cls, content: Any, info: ValidationInfo) -> str | None:
        """A string, or the text parts of a list of content parts joined."""
        if content is None or isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise PydanticCustomError("invalid_messages",
                                      "must be a string or a list of content parts")
        texts = []
        for index, raw in enumerate(content):
            if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
                raise PydanticCustomError("invalid_messages",
                                          "part {index} must be an object with a 'type'",
                                          {"index": index, "tail": f"[{index}]"})
            if raw["type"] != "text":
                raise _unsupported_part(index, raw["type"])
            if not isinstance(raw.get("text"), str):
                raise PydanticCustomError("invalid_messages", "a text part needs its 'text'",
                                          {"tail": f"[{index}].text"})
            texts.append(raw["text"])
        return "\n".join(texts)


def _unsupported_part(index: int, kind: str) -> PydanticCustomError:
    return PydanticCustomError(
        "unsupported_parameter",
        "content parts of type '{kind}' are not supported: a specialist reads text "
        "(send 'text' parts or a string)", {"kind": kind[:40], "tail": f"[{index}].type"})


class StreamOptions(_Open):
    include_usage: StrictBool = False


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]


class ChatRequest(_Open):
    """A chat completion request (the fields a specialist reads or refuses)."""

    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(None, gt=0.0, le=1.0, strict=True)
    seed: StrictInt | None = Field(None, ge=-(2 ** 63), lt=2 ** 63)
    stop: Any = None
    n: StrictInt | None = 1
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    reference: Any = None
    response_format: ResponseFormat | None = None
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    audio: Any = None
    modalities: list[StrictStr] | None = None
    frequency_penalty: float | None = Field(None, strict=True)
    presence_penalty: float | None = Field(None, strict=True)
    logit_bias: dict[StrictStr, Any] | None = None

    @field_validator("stream_options")
    @classmethod
    def _only_streamed(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("stream") is not True:
            raise _unsupported("is only allowed with 'stream': true")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(
                isinstance(x, str) and x for x in stops):
            raise PydanticCustomError("invalid", "must be a string or a list of 1 to 4 strings")
        return tuple(stops)

    @field_validator("n")
    @classmethod
    def _one(cls, value: int | None) -> int:
        if value not in (None, 1):
            raise _unsupported("must be 1: a specialist gives one answer per request")
        return 1

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise _unsupported("is not supported: a specialist answers its task, it calls "
                               "no tools")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none"):
            raise _unsupported("must be 'none' (or absent): a specialist calls no tools")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise _unsupported("is not supported: a specialist returns no log probabilities")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise _unsupported("is not supported: a specialist returns no log probabilities")
        return value

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, value: Any) -> Any:
        if value is not None:
            raise _unsupported("is not supported: a specialist answers in text")
        return value

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and value != ["text"]:
            raise _unsupported("must be [\"text\"]: a specialist answers in text")
        return value

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise _unsupported("must be 0: a specialist answers as it was evaluated")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise _unsupported("must be empty: a specialist answers as it was evaluated")
        return value

    # -- what the service reads --------------------------------------------------------------

    def user_text(self) -> str:
        """The last user message: the specialist's input."""
        users = [m.content for m in self.messages if m.role == "user" and m.content is not None]
        if not users:
            raise ServeError(400, "'messages' has no user message", code="invalid_messages",
                             param="messages")
        return users[-1]

    def key(self) -> str:
        """What the canary split hashes: ``safety_identifier``, ``prompt_cache_key``,
        ``user``, else a fresh id."""
        for value in (self.safety_identifier, self.prompt_cache_key, self.user):
            if value:
                return value
        return uuid.uuid4().hex

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def check_output(self, output_kind: str) -> None:
        """A ``response_format`` the task's output contract cannot honour is refused."""
        wanted = self.response_format.type if self.response_format else "text"
        if wanted != "text" and output_kind != "json":
            raise ServeError(400, f"'response_format.type' {wanted} needs a specialist whose "
                                  f"output is json (this one answers {output_kind}); send "
                                  "'text' or leave it out", code="unsupported_parameter",
                             param="response_format.type")

    def sampling(self, output_kind: str) -> dict[str, Any]:
        """The generation settings asked for (``GenerationRequest`` fields). Greedy unless
        ``temperature`` says otherwise (a specialist answers as it was evaluated)."""
        limit = self.max_completion_tokens or self.max_tokens \
            or DEFAULT_MAX_TOKENS.get(output_kind, 64)
        settings: dict[str, Any] = {"max_new_tokens": limit}
        if self.temperature is not None:
            settings["temperature"] = float(self.temperature)
        if self.top_p is not None:
            settings["top_p"] = float(self.top_p)
        if self.seed is not None:
            settings["seed"] = self.seed
        if self.stop:
            settings["stop"] = self.stop
        return settings


#: What a bad value of a field must be, for the fields whose rule is not said by the check.
MUST = {
    "model": "must be a specialist name or 'auto'",
    "messages": "must be a non-empty list of {role, content}",
    "stream": "must be true or false",
    "max_tokens": f"must be an integer from 1 to {MAX_TOKENS}",
    "max_completion_tokens": f"must be an integer from 1 to {MAX_TOKENS}",
    "temperature": "must be a number in [0, 2]",
    "top_p": "must be a number in (0, 1]",
    "seed": "must be an integer from -2**63 to 2**63-1",
    "metadata": "must map strings to strings",
    "user": "must be a string", "safety_identifier": "must be a string",
    "prompt_cache_key": "must be a string",
}


def _param(loc: tuple[Any, ...], tail: str = "") -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name + tail


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """``body`` as a :class:`ChatRequest`; a :class:`ServeError` (400) naming the first
    field at fault otherwise."""
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    top = str(loc[0]) if loc else "body"
    ctx = error.get("ctx") or {}
    param = _param(loc, str(ctx.get("tail", ""))) or "body"
    if error["type"] == "unsupported_parameter":
        raise ServeError(400, f"'{param}' {error['msg']}", code="unsupported_parameter",
                         param=param)
    if top == "messages" and loc[-1] == "role":
        message = f"'{param}' must be one of: {', '.join(ROLES)}"
    elif top == "messages" and error["type"] == "missing":
        message = f"'{param}' is missing: {MUST['messages']}"
    elif top in MUST and (len(loc) == 1 or top in ("messages", "metadata")):
        message = f"'{top}' {MUST[top]}" + (f" ('{param}': {error['msg']})"
                                              if param != top else "")
    else:
        message = f"'{param}' {error['msg'][0].lower()}{error['msg'][1:]}"
    raise ServeError(400, message, code=f"invalid_{top}", param=param)
