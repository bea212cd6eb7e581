from __future__ import annotations

import os
import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any, Iterator

import httpx2
import pytest

from openai import OpenAI, AsyncOpenAI, DefaultHttpx2Client, DefaultAioHttpClient, DefaultAsyncHttpx2Client
from openai._utils import is_dict

if TYPE_CHECKING:
    from _pytest.fixtures import FixtureRequest  # pyright: ignore[reportPrivateImportUsage]

pytest.register_assert_rewrite("tests.utils")

logging.getLogger("openai").setLevel(logging.DEBUG)


# modelsmith: pytest-asyncio is not installed here. The async tests run on one event loop
# for the session (as upstream's loop_scope="session"), the async client fixture is built
# and closed on it. The respx2 mock plugin is left out: the chat completion tests do not
# mock.
_loop = asyncio.new_event_loop()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    _loop.run_until_complete(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True


base_url = os.environ.get("TEST_API_BASE_URL", "http://127.0.0.1:4010")
test_http_client = os.environ.get("OPENAI_TEST_HTTP_CLIENT", "httpx2")

api_key = "My API Key"
admin_api_key = "My Admin API Key"


@pytest.fixture(scope="session")
def client(request: FixtureRequest) -> Iterator[OpenAI]:
    strict = getattr(request, "param", True)
    if not isinstance(strict, bool):
        raise TypeError(f"Unexpected fixture parameter type {type(strict)}, expected {bool}")

    http_client = DefaultHttpx2Client() if test_http_client == "httpx2" else None

    with OpenAI(
        base_url=base_url,
        api_key=api_key,
        admin_api_key=admin_api_key,
        _strict_response_validation=strict,
        http_client=http_client,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def async_client(request: FixtureRequest) -> Iterator[AsyncOpenAI]:
    param = getattr(request, "param", True)

    # defaults
    strict = True
    http_client: None | type[httpx2.AsyncClient] = None

    if isinstance(param, bool):
        strict = param
    elif is_dict(param):
        strict = param.get("strict", True)
        assert isinstance(strict, bool)

        http_client_type = param.get("http_client", "httpx2")
        if http_client_type == "aiohttp":
            http_client = DefaultAioHttpClient
    else:
        raise TypeError(f"Unexpected fixture parameter type {type(param)}, expected bool or dict")

    if http_client is None and test_http_client == "httpx2":
        http_client = DefaultAsyncHttpx2Client

    async def make() -> AsyncOpenAI:  # the aiohttp client wants a running loop
        return AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            admin_api_key=admin_api_key,
            _strict_response_validation=strict,
            http_client=http_client() if http_client is not None else None,
        )

    client = _loop.run_until_complete(make())
    try:
        yield client
    finally:
        _loop.run_until_complete(client.close())
