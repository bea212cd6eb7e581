"""Probing the host pool: every host at once, each within the configured timeout, then a
ranking by affinity and availability.

A probe asks a host for its CPU count, free memory, load and GPU count by running one small
shell command there (directly for ``local``, over ``ssh`` with BatchMode for ``ssh``). A
host that does not answer within the timeout, refuses the connection or answers nonsense is
*down*, with the reason. All probes run in parallel threads, so probing a pool costs about
one timeout, not the sum of them.

Ranking (best first): hosts that are up; then those whose ``affinity`` tags include all the
wanted ones; then more free GPUs when GPUs are wanted; then the lower load per CPU; then
more free memory; ties keep the pool's order (the order in ``defaults.training_hosts`` is
the team's preference).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from modelsmith.specs.clusters import Host

#: An ssh_config file for every ssh call (keys, users, ports); default ~/.ssh/config.
SSH_CONFIG_ENV = "MODELSMITH_SSH_CONFIG"
#: The probe a host runs: CPUs, MemAvailable (kB), 1-minute load, GPUs (0 without nvidia-smi).
PROBE_SCRIPT = (
    "nproc; "
    "awk '/^MemAvailable:/ {print $2}' /proc/meminfo; "
    "cut -d' ' -f1 /proc/loadavg; "
    "(nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true"
)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found."""

    host: str
    up: bool
    seconds: float
    reason: str = ""  # why it is down
    cpus: int = 0
    mem_free_mb: int = 0
    load: float = 0.0
    gpus: int = 0
    affinity: tuple[str, ...] = field(default_factory=tuple)

    @property
    def load_per_cpu(self) -> float:
        return self.load / self.cpus if self.cpus else float("inf")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["affinity"] = list(self.affinity)
        return data


def ssh_command(address: str, script: str, timeout_s: float) -> list[str]:
    """``ssh`` argv that runs ``script`` on ``[user@]host[:port]`` (or a host alias of the
    ssh config) without prompting; ``$MODELSMITH_SSH_CONFIG`` names the config file."""
    target, port = address, None
    if ":" in address.rsplit("@", 1)[-1]:
        target, port = address.rsplit(":", 1)
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout_s))}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
    if config := os.environ.get(SSH_CONFIG_ENV):
        argv[1:1] = ["-F", config]
    if port:
        argv += ["-p", port]
    return [*argv, target, script]


def probe_command(host: Host, timeout_s: float) -> list[str]:
    if host.kind == "local":
        return ["sh", "-c", PROBE_SCRIPT]
    if host.kind == "ssh":
        assert host.address is not None
        return ssh_command(host.address, "sh -c " + shlex.quote(PROBE_SCRIPT), timeout_s)
    raise ValueError(f"no shell probe for a {host.kind} host")


def parse_probe(name: str, host: Host, output: str, seconds: float) -> ProbeResult:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    try:
        cpus, mem_kb, load, gpus = int(lines[0]), int(lines[1]), float(lines[2]), int(lines[3])
    except (IndexError, ValueError):
        return ProbeResult(name, False, seconds, f"unexpected probe output: {output[:200]!r}")
    return ProbeResult(name, True, seconds, cpus=cpus, mem_free_mb=mem_kb // 1024, load=load,
                       gpus=gpus, affinity=tuple(host.affinity))


def probe_host(name: str, host: Host, timeout_s: float,
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> ProbeResult:
    """Probe one host; never raises: a host that cannot be probed is down, with why."""
    started = time.monotonic()
    try:
        if host.kind == "ray":
            return _probe_ray(name, host, timeout_s, started)
        done = run(probe_command(host, timeout_s), capture_output=True, text=True,
                   timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(name, False, time.monotonic() - started,
                           f"no answer within {timeout_s:g} s")
    except OSError as exc:
        return ProbeResult(name, False, time.monotonic() - started, f"cannot run probe: {exc}")
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return ProbeResult(name, False, seconds, f"exit {done.returncode}: {tail[0][:200]}")
    return parse_probe(name, host, done.stdout, seconds)


def _probe_ray(name: str, host: Host, timeout_s: float, started: float) -> ProbeResult:
    """A Ray cluster is up when its dashboard/GCS address accepts a TCP connection."""
    import socket

    address = (host.address or "").split("://", 1)[-1].rstrip("/")
    hostname, _, port = address.rpartition(":")
    try:
        with socket.create_connection((hostname or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        return ProbeResult(name, False, time.monotonic() - started, f"ray at {address}: {exc}")
    return ProbeResult(name, True, time.monotonic() - started, affinity=tuple(host.affinity))


def probe_all(hosts: Mapping[str, Host], names: Sequence[str], timeout_s: float,
              probe: Callable[[str, Host, float], ProbeResult] = probe_host,
              ) -> list[ProbeResult]:
    """Probe ``names`` in parallel; results in the order of ``names``."""
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(probe, name, hosts[name], timeout_s) for name in names]
        return [f.result() for f in futures]


def rank(results: Sequence[ProbeResult], *, wants: Sequence[str] = (),
         gpus: int = 0) -> list[ProbeResult]:
    """Usable hosts, best first (see the module docstring); down hosts are left out."""
    order = {r.host: i for i, r in enumerate(results)}
    wanted = set(wants)

    def key(r: ProbeResult) -> tuple:
        return (not wanted <= set(r.affinity), -(min(r.gpus, gpus) if gpus else 0),
                round(r.load_per_cpu, 2), -r.mem_free_mb, order[r.host])

    return sorted((r for r in results if r.up and r.gpus >= gpus), key=key)
