"""Host probes: the local machine answers, a refused or silent ssh host is down with the
reason, the pool is probed in parallel (one timeout, not the sum) and ranked."""

from __future__ import annotations

import socket
import time

from modelsmith.fleet.probe import ProbeResult, probe_all, probe_host, rank, ssh_command
from modelsmith.specs.clusters import Host

LOCAL = Host(kind="local", affinity=["cpu"])


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_the_local_host_answers_with_its_resources():
    result = probe_host("local", LOCAL, 10)
    assert result.up, result.reason
    assert result.cpus >= 1 and result.mem_free_mb > 0 and result.load >= 0
    assert result.gpus >= 0 and result.affinity == ("cpu",)


def test_a_refused_ssh_host_is_down_with_the_reason():
    host = Host(kind="ssh", address=f"nobody@127.0.0.1:{closed_port()}")
    result = probe_host("gone", host, 10)
    assert not result.up and "exit 255" in result.reason
    assert "refused" in result.reason.lower()


def test_a_silent_host_is_down_after_the_timeout(silent_port):
    host = Host(kind="ssh", address=f"127.0.0.1:{silent_port}")
    result = probe_host("hung", host, 1.0)
    assert not result.up and result.reason == "no answer within 1 s"
    assert 0.9 <= result.seconds < 10


def test_the_pool_is_probed_in_parallel(silent_port):
    hosts = {f"hung{i}": Host(kind="ssh", address=f"127.0.0.1:{silent_port}")
             for i in range(4)}
    hosts["local"] = LOCAL
    started = time.monotonic()
    results = probe_all(hosts, list(hosts), 1.0)
    elapsed = time.monotonic() - started
    assert [r.host for r in results] == list(hosts)
    assert [r.up for r in results] == [False] * 4 + [True]
    # Four silent hosts at 1 s each: about 1 s together, never the 4 s of one at a time.
    assert elapsed < 2.5


def test_a_ray_host_is_up_when_its_address_accepts_connections(silent_port):
    assert probe_host("ray", Host(kind="ray", address=f"127.0.0.1:{silent_port}"), 2).up
    down = probe_host("ray", Host(kind="ray", address=f"ray://127.0.0.1:{closed_port()}"), 2)
    assert not down.up and "ray at 127.0.0.1" in down.reason


def up(name: str, **kw: object) -> ProbeResult:
    values = {"cpus": 2, "mem_free_mb": 1000, "load": 0.5, "gpus": 0, **kw}
    return ProbeResult(name, True, 0.01, **values)  # type: ignore[arg-type]


def test_ranking_prefers_reachable_matching_and_idle_hosts():
    results = [ProbeResult("first", False, 1.0, "no answer within 1 s"), up("second"),
               up("third")]
    assert [r.host for r in rank(results)] == ["second", "third"]  # pool order on ties
    busy = [up("a", load=1.9), up("b", load=0.1), up("c", load=0.1, mem_free_mb=9000)]
    assert [r.host for r in rank(busy)] == ["c", "b", "a"]
    tagged = [up("plain"), up("fast", affinity=("cpu", "fast"))]
    assert [r.host for r in rank(tagged, wants=["fast"])] == ["fast", "plain"]
    gpu = [up("cpu-only"), up("one", gpus=1), up("two", gpus=2)]
    assert [r.host for r in rank(gpu, gpus=1)] == ["one", "two"]
    assert [r.host for r in rank(gpu, gpus=2)] == ["two"]


def test_ssh_argv_never_prompts_and_takes_a_port():
    argv = ssh_command("ci@build-3:2222", "true", 5)
    assert argv[-2:] == ["ci@build-3", "true"] and argv[argv.index("-p") + 1] == "2222"
    assert "BatchMode=yes" in argv and "ConnectTimeout=5" in argv
    assert "-p" not in ssh_command("build-3", "true", 5)
