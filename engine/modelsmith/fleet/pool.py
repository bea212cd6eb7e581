"""The training host pool: probe, rank, hand out executors, fail over.

``defaults.training_hosts`` in ``config/clusters.json`` is the pool; adding a host is one
entry in ``hosts``. :meth:`Pool.choose` probes every host not yet excluded (in parallel,
each within ``thresholds.probe_timeout_s``) and returns the best one with its executor;
:meth:`Pool.exclude` takes a host out for the rest of the run (it failed us), so the next
:meth:`Pool.choose` fails over to the next best.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from modelsmith.errors import ModelsmithError
from modelsmith.specs.clusters import ClustersConfig, Host

from .executors import Executor, LocalExecutor, RayExecutor, SshExecutor
from .probe import ProbeResult, probe_all, rank


class NoHostError(ModelsmithError, RuntimeError):
    """Every host in the pool is down or excluded; the message lists why, host by host."""


def executor_for(name: str, host: Host) -> Executor:
    if host.kind == "local":
        return LocalExecutor(name)
    if host.kind == "ssh":
        assert host.address is not None
        return SshExecutor(name, host.address)
    assert host.address is not None
    wants = host.ray_resources()
    return RayExecutor(name, host.address, cpus=wants.cpus, gpus=wants.gpus or 0,
                       memory_mb=wants.memory_mb)


@dataclass
class Pool:
    hosts: Mapping[str, Host]
    names: Sequence[str]  # the pool, in the team's order of preference
    probe_timeout_s: float = 5.0
    wants: Sequence[str] = ()  # affinity tags the job prefers
    gpus: int = 0
    make_executor: Callable[[str, Host], Executor] = executor_for
    excluded: dict[str, str] = field(default_factory=dict)  # host -> why
    last_probe: list[ProbeResult] = field(default_factory=list)

    @classmethod
    def from_config(cls, clusters: ClustersConfig, names: Sequence[str] | None = None,
                    **kw: object) -> Pool:
        chosen = list(names or clusters.defaults.training_hosts)
        unknown = [n for n in chosen if n not in clusters.hosts]
        if unknown:
            raise NoHostError(f"unknown host {unknown[0]!r} (hosts in config/clusters.json: "
                              f"{', '.join(sorted(clusters.hosts))})")
        return cls(clusters.hosts, chosen, clusters.thresholds.probe_timeout_s, **kw)  # type: ignore[arg-type]

    def choose(self) -> tuple[str, Executor]:
        """The best usable host now, and its executor."""
        candidates = [n for n in self.names if n not in self.excluded]
        self.last_probe = probe_all(self.hosts, candidates, self.probe_timeout_s)
        ranked = rank(self.last_probe, wants=self.wants, gpus=self.gpus)
        if not ranked:
            why = [f"{n}: {r}" for n, r in self.excluded.items()]
            why += [f"{r.host}: {r.reason or 'lacks the GPUs the job needs'}"
                    for r in self.last_probe if not (r.up and r.gpus >= self.gpus)]
            raise NoHostError("no training host available (" + "; ".join(why) + ")")
        best = ranked[0].host
        return best, self.make_executor(best, self.hosts[best])

    def exclude(self, name: str, why: str) -> None:
        self.excluded[name] = why
