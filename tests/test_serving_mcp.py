"""``modelsmith mcp`` with the real ``mcp`` client over stdio: the tools are listed, a
specialist answers with structured output from the version the log puts in production,
and a bad argument is an MCP error, not a crash."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from modelsmith.events.types import Promoted

mcp = pytest.importorskip("mcp")
from test_serving_server import fleet  # noqa: E402


def test_the_fleet_as_mcp_tools(demo_repo, tmp_path, monkeypatch):
    from mcp import Client, StdioServerParameters

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "modelsmith", "-C", str(demo_repo), "mcp"],
                                   env={**os.environ})

    async def session():
        async with Client(params, read_timeout_seconds=120) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            answer = await client.call_tool("rtb-quality", {
                "input": "domain=news.example ctr=0.7% floor=$1.20"})
            bad = await client.call_tool("rtb-quality", {"input": 42, "nonsense": True})
            empty = await client.call_tool("rtb-quality", {"input": "   "})
            summary = await client.call_tool("evaluation_summary",
                                             {"specialist": "rtb-quality"})
            status = await client.call_tool("fleet_status", {})
            return tools, answer, bad, empty, summary, status

    tools, answer, bad, empty, summary, status = asyncio.run(session())
    assert set(tools) == {"rtb-quality", "fleet_status", "evaluation_summary"}
    schema = tools["rtb-quality"].input_schema
    assert schema["required"] == ["input"] and schema["properties"]["input"]["type"] == "string"
    described = schema["properties"]["input"]
    assert described["minLength"] == 1 and "'Bid: {input}\\nVerdict:'" in \
        described["description"] and "one of ACCEPT, REJECT" in described["description"]
    assert not answer.is_error
    result = answer.structured_content
    assert (result["version"], result["stage"]) == ("v1", "production")
    assert isinstance(result["answer"], str) and isinstance(result["valid"], bool)
    assert bad.is_error and empty.is_error  # errors, and the server answered the next call
    assert "input is empty" in empty.content[0].text
    assert not summary.is_error and not status.is_error
