"""Serving overhead and batching, with ``tiny-test`` as the production version.

1. One client: requests/s and p95 latency through ``modelsmith serve`` (HTTP on 127.0.0.1,
   routing, the split from the event log, metrics) against calling the same backend
   directly, one request at a time (the overhead ratio).
2. ``--clients`` concurrent clients through ``serve``: concurrent requests coalesced into
   batched backend calls, against the same server with batching off (``max_batch=1``).
3. ``GET /healthz`` while those clients keep the server busy, against an idle server (it is
   answered on the event loop, never behind the service's threads), and the same one
   client over one keep-alive connection against a new connection per request.

    python bench/serve.py
    python bench/serve.py --requests 500 --clients 16 --model auto
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from modelsmith.app import Modelsmith
from modelsmith.app.scaffold import embedded_defaults, prepare_fork
from modelsmith.artifacts.models import resolve_model
from modelsmith.evaluation.stats import percentile
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.inference.base import GenerationRequest
from modelsmith.serving.http import make_server
from modelsmith.serving.service import Service

BIDS = [f"domain=site{i}.example ctr={i % 17 / 10:.1f}% floor=${i % 5}.00 format=banner"
        for i in range(64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model", default="rtb-quality", help="a specialist, or auto")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (part 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "fork"
        prepare_fork(embedded_defaults(Path(__file__).resolve().parent), root)
        ws = Modelsmith.open(root)
        tiny = resolve_model("tiny-test", ws.specs().clusters, progress=lambda _m: None).path
        shutil.copytree(tiny, root / "models" / "rtb-quality" / "v1")
        GitEventStore(root).append("rtb-quality", [Event.new(p, actor="bench") for p in (
            CandidateRegistered(version="v1", lineage=Lineage(base_model="tiny-test")),
            Promoted(version="v1", stage="production"))], 0)
        task = ws.specs().specialists["rtb-quality"].spec.task

        def serving(max_batch: int | None) -> tuple[Service, Any, int]:
            service = ws.service(max_batch=max_batch)
            httpd = make_server(service, port=0).start()
            return service, httpd, httpd.server_address[1]

        def caller(port: int, keep_alive: bool = True) -> Any:
            conn = http.client.HTTPConnection("127.0.0.1", port)

            def through_serve(text: str) -> None:
                if not keep_alive:
                    conn.close()
                body = json.dumps({"model": args.model,
                                   "messages": [{"role": "user", "content": text}]})
                conn.request("POST", "/v1/chat/completions", body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
            return through_serve

        def run(calls: list[Any]) -> tuple[float, float]:
            """Each call in its own thread, ``args.requests`` requests in all."""
            for call in calls:
                call(BIDS[0])  # warm
            latencies: list[float] = []
            share = args.requests // len(calls)

            def loop(k: int) -> None:
                call = calls[k]
                for i in range(share):
                    t0 = time.perf_counter()
                    call(BIDS[(k * share + i) % len(BIDS)])
                    latencies.append((time.perf_counter() - t0) * 1000)

            threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(calls))]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return share * len(calls) / (time.perf_counter() - started), percentile(latencies, 95)

        results = {}
        service, httpd, port = serving(None)
        backend = service.backend("rtb-quality", "v1")

        def direct(text: str) -> None:
            backend.generate([GenerationRequest(prompt=task.render(text), max_new_tokens=4)])

        results["direct"] = run([direct])
        results["serve"] = run([caller(port)])
        results["serve, new connection each"] = run([caller(port, keep_alive=False)])
        health_idle = healthz(port, threading.Event(), 50)
        busy = threading.Event()
        checked: list[float] = []
        probe = threading.Thread(target=lambda: checked.extend(healthz(port, busy)))
        probe.start()
        results[f"serve x{args.clients} batched"] = run(
            [caller(port) for _ in range(args.clients)])
        busy.set()
        probe.join()
        sizes = dict(sorted(service.batcher("rtb-quality", "v1").sizes.items()))
        stop(service, httpd)
        service, httpd, port = serving(1)
        results[f"serve x{args.clients} unbatched"] = run(
            [caller(port) for _ in range(args.clients)])
        stop(service, httpd)
    width = max(len(name) for name in results)
    print(f"{'path':>{width}} {'req/s':>8} {'p95 ms':>8}")
    for name, (rate, tail) in results.items():
        print(f"{name:>{width}} {rate:>8.1f} {tail:>8.2f}")
    overhead = results["direct"][0] / results["serve"][0]
    print(f"one client: serve runs at {1 / overhead:.2f}x the direct rate ({overhead:.2f}x the "
          "time per request)")
    batched = results[f"serve x{args.clients} batched"][0]
    unbatched = results[f"serve x{args.clients} unbatched"][0]
    print(f"{args.clients} clients: batching serves {batched / unbatched:.2f}x the requests/s "
          f"of one request per backend call (batch sizes seen: {sizes})")
    fresh = results["serve, new connection each"][0]
    print(f"one client: keep-alive serves {results['serve'][0] / fresh:.2f}x the requests/s "
          "of a new connection per request")
    idle_p95, busy_p95 = percentile(health_idle, 95), percentile(checked, 95)
    print(f"/healthz p95: {idle_p95:.2f} ms idle, {busy_p95:.2f} ms with {args.clients} "
          f"clients busy ({busy_p95 / idle_p95:.1f}x; max {max(checked):.1f} ms of "
          f"{len(checked)})")


def healthz(port: int, stop: threading.Event, count: int | None = None) -> list[float]:
    """Milliseconds per ``GET /healthz`` (new connection each), until ``stop`` or
    ``count``."""
    took: list[float] = []
    while not stop.is_set() and (count is None or len(took) < count):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        took.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)
    return took


def stop(service: Service, httpd: Any) -> None:
    httpd.stop(grace=0)
    service.close()



if __name__ == "__main__":
    main()
