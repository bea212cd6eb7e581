"""Batching in serving: ``--clients`` threads each send requests to one loaded version
through the serving batcher (concurrent requests share backend calls), against the same
backend with batching off (``max_batch=1``: one request per call). Prints requests/s,
p50/p95 latency, the ratio, and how often a batched answer equals the answer given alone.

    python bench/batching.py                                  # tiny-test on the CPU
    python bench/batching.py --model PATH --device cuda --dtype bfloat16 --clients 32

``--model`` is a model profile (``tiny-test``, ``smollm2-135m``) or a Hugging Face folder.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from modelsmith.evaluation.stats import percentile
from modelsmith.inference.base import GenerationRequest
from modelsmith.serving.batching import Batcher

BIDS = [f"Bid: domain=site{i}.example ctr={i % 17 / 10:.1f}% floor=${i % 5}.00 "
        f"format={('banner', 'video', 'native')[i % 3]}\nVerdict:" for i in range(256)]


def load(ref: str, device: str, dtype: str, batch_size: int):
    from modelsmith.inference.transformers_backend import TransformersBackend

    folder = Path(ref)
    if folder.is_dir():  # a plain folder needs no repository (and no specs) to load
        from modelsmith.artifacts.models import ResolvedModel

        model = ResolvedModel(ref=ref, path=folder, hub_id=None,
                              chat_template=(folder / "chat_template.jinja").exists(),
                              max_length=2048, profile=None)
    else:
        from modelsmith.artifacts.models import resolve_model
        from modelsmith.specs import load_clusters

        root = Path(__file__).resolve().parent.parent
        model = resolve_model(ref, load_clusters(root / "config" / "clusters.json"),
                              progress=lambda _m: None)
    return TransformersBackend(model, batch_size=batch_size, device=device, dtype=dtype)


def run(batcher: Batcher, clients: int, total: int, tokens: int) -> dict[str, object]:
    share = total // clients
    answers: dict[int, str] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(share):
            n = (k * share + i) % len(BIDS)
            t0 = time.perf_counter()
            text = batcher.generate(GenerationRequest(prompt=BIDS[n], max_new_tokens=tokens)).text
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                answers[n] = text

    batcher.generate(GenerationRequest(prompt=BIDS[0], max_new_tokens=tokens))  # warm
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"rate": share * clients / elapsed, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=4, help="max new tokens per answer")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    backend = load(args.model, args.device, args.dtype, args.max_batch)
    results = {}
    for name, size in (("one request per call", 1), ("batched", args.max_batch)):
        batcher = Batcher(backend, max_batch=size)
        results[name] = run(batcher, args.clients, args.requests, args.tokens)
        results[name]["sizes"] = dict(sorted(batcher.sizes.items()))
        batcher.close(backend=False)  # the next run shares the loaded model
    alone, together = results["one request per call"], results["batched"]
    same = sum(together["answers"][n] == alone["answers"][n] for n in alone["answers"])
    print(f"{args.model} on {args.device} ({args.dtype}), {args.clients} clients, "
          f"{args.requests} requests of up to {args.tokens} tokens")
    print(f"{'':>22} {'req/s':>9} {'p50 ms':>9} {'p95 ms':>9}")
    for name, r in results.items():
        print(f"{name:>22} {r['rate']:>9.1f} {r['p50']:>9.1f} {r['p95']:>9.1f}")
    print(f"batching serves {together['rate'] / alone['rate']:.2f}x the requests/s; "
          f"batch sizes {together['sizes']}")
    print(f"{same} of {len(alone['answers'])} batched answers equal the answer given alone")
    backend.close()


if __name__ == "__main__":
    main()
