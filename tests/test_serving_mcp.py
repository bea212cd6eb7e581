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


def _start_http(root, tmp_path, *args, env=None):
    """``modelsmith mcp --transport streamable-http --port 0`` in its own process; it and
    the URL it printed once it listens."""
    import subprocess
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "modelsmith", "-C", str(root), "mcp",
                             "--transport", "streamable-http", "--port", "0", *args],
                            env={**os.environ, "MODELSMITH_CACHE": str(tmp_path / "cache"),
                                 **(env or {})},
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


def _stop(proc, lines):
    """SIGTERM, and the server gone within a minute with exit 0 (killed if not)."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
    except Exception:
        proc.kill()
        raise
    assert code == 0, "".join(lines)


def test_the_fleet_over_streamable_http(demo_repo, tmp_path, monkeypatch):
    """The same tools through the real client over streamable HTTP; an unknown tool is a
    JSON-RPC error (-32602), a request naming another Host (DNS rebinding) is refused;
    SIGTERM stops the server cleanly."""
    import json
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
        _stop(proc, lines)


def test_a_token_guards_streamable_http(demo_repo, tmp_path, monkeypatch):
    """With MODELSMITH_MCP_TOKEN set (or --token-env naming another variable) every request
    needs the bearer token: none, a wrong one or another scheme get a 401 before the MCP
    app sees them; the real client with the token (scheme in lower case) works."""
    import json
    import urllib.error
    import urllib.request

    import httpx2  # the HTTP client of the mcp package's transports
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    proc, url, lines = _start_http(demo_repo, tmp_path, "--token-env", "FLEET_MCP_TOKEN",
                                   env={"FLEET_MCP_TOKEN": "s3cret-token",
                                        "MODELSMITH_MCP_TOKEN": "not-this-one"})
    try:
        ping = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        for header in (None, "Bearer not-this-one", "Basic s3cret-token", "Bearer s3cret"):
            headers = {"Content-Type": "application/json",
                       "Accept": "application/json, text/event-stream"}
            if header is not None:
                headers["Authorization"] = header
            refused = urllib.request.Request(url, method="POST", data=ping, headers=headers)
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(refused, timeout=60)
            assert answer.value.code == 401, header
            assert answer.value.headers["WWW-Authenticate"].startswith("Bearer")
            error = json.loads(answer.value.read())["error"]
            assert error["message"] == "missing or wrong bearer token"

        async def session():
            http = httpx2.AsyncClient(headers={"Authorization": "bearer s3cret-token"},
                                      timeout=httpx2.Timeout(30, read=300))
            async with http, Client(streamable_http_client(url, http_client=http),
                                    read_timeout_seconds=120) as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                status = await client.call_tool("fleet_status", {})
                return tools, status

        tools, status = asyncio.run(session())
        assert "rtb-quality" in tools and not status.is_error
    finally:
        _stop(proc, lines)
    assert not any("warning" in line for line in lines)  # loopback: nothing to warn of


def test_listening_beyond_loopback_without_a_token_warns(capsys):
    from modelsmith.cli._base import warn_open

    warn_open("127.0.0.1", None, "MODELSMITH_MCP_TOKEN", "can call every specialist")
    warn_open("0.0.0.0", "s3cret", "MODELSMITH_MCP_TOKEN", "can call every specialist")
    assert capsys.readouterr().err == ""
    warn_open("0.0.0.0", None, "MODELSMITH_SERVE_TOKEN", "can call every specialist")
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0 without a token" in err
    assert "set MODELSMITH_SERVE_TOKEN" in err


@pytest.mark.parametrize("option", [["--port", "9"], ["--host", "127.0.0.1"],
                                    ["--token-env", "X"]])
def test_host_port_and_token_need_streamable_http(demo_repo, option):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "modelsmith", "-C", str(demo_repo), "mcp",
                           *option], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--host, --port and --token-env are for --transport streamable-http" in done.stderr
