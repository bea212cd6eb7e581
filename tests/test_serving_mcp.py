"""``modelsmith mcp`` with the real ``mcp`` client over stdio: the tools are listed, a
specialist answers with structured output from the version the log puts in production,
and a bad argument is an MCP error, not a crash; the same over streamable HTTP."""

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


def _start_http(root, tmp_path, *args):
    """``modelsmith mcp --transport streamable-http --port 0`` in its own process; it and
    the URL it printed once it listens."""
    import subprocess
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "modelsmith", "-C", str(root), "mcp",
                             "--transport", "streamable-http", "--port", "0", *args],
                            env={**os.environ, "MODELSMITH_CACHE": str(tmp_path / "cache")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "serving MCP on " in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120) or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"mcp did not start: {''.join(lines)}")
    url = next(line for line in lines if "serving MCP on " in line).split()[3]
    return proc, url, lines


def test_the_fleet_over_streamable_http(demo_repo, tmp_path, monkeypatch):
    """The same tools through the real client over streamable HTTP; an unknown tool is a
    JSON-RPC error (-32602), a request naming another Host (DNS rebinding) is refused;
    SIGTERM stops the server cleanly."""
    import json
    import signal
    import urllib.error
    import urllib.request

    from mcp import Client
    from mcp.shared.exceptions import MCPError

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    proc, url, lines = _start_http(demo_repo, tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")

        async def session():
            async with Client(url, read_timeout_seconds=120) as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                answer = await client.call_tool("rtb-quality", {
                    "input": "domain=news.example ctr=0.7% floor=$1.20"})
                bad = await client.call_tool("rtb-quality", {"input": 42})
                with pytest.raises(MCPError) as unknown:  # a protocol error, not a result
                    await client.call_tool("no-such-tool", {"input": "x"})
                status = await client.call_tool("fleet_status", {})
                return tools, answer, bad, unknown.value, status

        tools, answer, bad, unknown, status = asyncio.run(session())
        assert unknown.code == -32602 and "no-such-tool" in unknown.error.message
        assert tools == {"rtb-quality", "fleet_status", "evaluation_summary"}
        assert not answer.is_error
        result = answer.structured_content
        assert (result["version"], result["stage"]) == ("v1", "production")
        assert bad.is_error and not status.is_error
        rebound = urllib.request.Request(
            url, method="POST", data=json.dumps({"jsonrpc": "2.0", "id": 1,
                                                 "method": "ping"}).encode(),
            headers={"Host": "evil.example", "Content-Type": "application/json",
                     "Accept": "application/json, text/event-stream"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=60)
        assert refused.value.code == 421
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except Exception:
            proc.kill()
            raise
    assert code == 0, "".join(lines)


def test_host_and_port_need_streamable_http(demo_repo):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "modelsmith", "-C", str(demo_repo), "mcp",
                           "--port", "9"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--host and --port are for --transport streamable-http" in done.stderr
