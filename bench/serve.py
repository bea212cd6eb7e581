"""Serving overhead: requests/s and p95 latency through ``modelsmith serve`` (HTTP on
127.0.0.1, routing, the split from the event log, metrics) against calling the same
backend directly, one request at a time, with ``tiny-test`` as the production version.

    python bench/serve.py
    python bench/serve.py --requests 500 --model auto
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

from modelsmith.artifacts.models import resolve_model
from modelsmith.demo import embedded_defaults, prepare_fork
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.inference.base import GenerationRequest
from modelsmith.serving.server import Service, make_server
from modelsmith.workspace import Workspace

BIDS = [f"domain=site{i}.example ctr={i % 17 / 10:.1f}% floor=${i % 5}.00 format=banner"
        for i in range(64)]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model", default="rtb-quality", help="a specialist, or auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "fork"
        prepare_fork(embedded_defaults(Path(__file__).resolve().parent), root)
        ws = Workspace.find(root)
        tiny = resolve_model("tiny-test", ws.specs().clusters, progress=lambda _m: None).path
        shutil.copytree(tiny, root / "models" / "rtb-quality" / "v1")
        GitEventStore(root).append("rtb-quality", [Event.new(p, actor="bench") for p in (
            CandidateRegistered(version="v1", lineage=Lineage(base_model="tiny-test")),
            Promoted(version="v1", stage="production"))], 0)
        service = Service(ws)
        httpd = make_server(service, port=0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1])

        def through_serve(text: str) -> None:
            body = json.dumps({"model": args.model,
                               "messages": [{"role": "user", "content": text}]})
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status

        backend = service.backend("rtb-quality", "v1")
        task = ws.specs().specialists["rtb-quality"].spec.task

        def direct(text: str) -> None:
            backend.generate([GenerationRequest(prompt=task.render(text), max_new_tokens=4)])

        results = {}
        for name, call in (("direct", direct), ("serve", through_serve)):
            call(BIDS[0])  # warm
            latencies = []
            started = time.perf_counter()
            for i in range(args.requests):
                t0 = time.perf_counter()
                call(BIDS[i % len(BIDS)])
                latencies.append((time.perf_counter() - t0) * 1000)
            elapsed = time.perf_counter() - started
            results[name] = (args.requests / elapsed, p95(latencies))
        httpd.shutdown()
        httpd.server_close()
        service.close()
    print(f"{'path':>8} {'req/s':>8} {'p95 ms':>8}")
    for name, (rate, tail) in results.items():
        print(f"{name:>8} {rate:>8.1f} {tail:>8.2f}")
    overhead = results["direct"][0] / results["serve"][0]
    print(f"serve runs at {1 / overhead:.2f}x the direct rate ({overhead:.2f}x the time per "
          "request)")


if __name__ == "__main__":
    main()
