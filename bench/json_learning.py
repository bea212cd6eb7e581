"""Can the tiny test model learn JSON extraction? SFT on generator rows only, then per-field
exact match on held-out inputs with greedy decoding.

    python bench/json_learning.py                          # the fixture's profile
    python bench/json_learning.py --rows 1500 --steps 600 --batch-size 64 --lr 0.003

Uses the invoices fork under tests/fixtures/invoices: its suite's generator (``fresh``)
makes the training rows -- new records, never a core, dev or held-out input -- rendered with
the specialist's prompt template; the model is the fork's ``tiny-test`` profile and the
hyper-parameters default to the specialist's profile, each overridable. Prints the token
lengths of prompt + answer, the training time (one thread unless the profile says more),
and held-out (or ``--split dev``) accuracy per field, the share of outputs that pass the
schema, and the share with every field right.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORK = ROOT / "tests" / "fixtures" / "invoices"
SUITE = FORK / "evals" / "invoices"


def _generator():
    spec = importlib.util.spec_from_file_location("invoices_generate", SUITE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _specialist() -> dict:
    import yaml

    return yaml.safe_load((FORK / "specialists" / "invoices.yaml").read_text())["spec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=800, help="generator rows to train on")
    parser.add_argument("--steps", type=int, help="SFT steps (default: the profile's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the profile's)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0, help="generator and training seed")
    parser.add_argument("--split", default="heldout", choices=["heldout", "dev", "core"])
    parser.add_argument("--cache", type=Path, help="model cache (default: a temporary one)")
    args = parser.parse_args()

    from modelsmith.specs import load_clusters

    gen = _generator()
    spec = _specialist()
    clusters = load_clusters(FORK / "config" / "clusters.json")
    profile = clusters.profiles[spec["training"]["profile"]]
    changes = {k: v for k, v in {"max_steps": args.steps, "learning_rate": args.lr,
                                 "batch_size": args.batch_size, "seed": args.seed}.items()
               if v is not None}
    profile = profile.model_copy(update=changes)
    os.environ.setdefault("OMP_NUM_THREADS", str(profile.threads or 1))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelsmith.artifacts.models import resolve_model
    from modelsmith.evaluation.criteria import parse_json_output, schema_validator
    from modelsmith.training.trainers import train

    torch.set_num_threads(profile.threads or 1)
    template = spec["task"]["prompt_template"]
    schema = spec["task"]["output"]["schema"]
    scenarios = [json.loads(line) for line in (SUITE / "scenarios.jsonl").open()]
    core = [s for s in scenarios if s["split"] == "core"]
    targets = [s for s in scenarios if s["split"] == args.split]
    suite_texts = {t for s in scenarios for t in (s["input"], *s.get("variants", []))}

    per_row = -(-args.rows // len(core))
    rows = []
    for sc in core:
        for item in gen.fresh(sc, per_row, args.seed):
            assert item["input"] not in suite_texts, item["input"]
            rows.append({"prompt": template.replace("{input}", item["input"]),
                         "completion": " " + json.dumps(item["expected"], ensure_ascii=False),
                         "expected": item["expected"], "scenario_id": sc["id"]})
    random.Random(args.seed).shuffle(rows)
    rows = rows[:args.rows]

    with tempfile.TemporaryDirectory(prefix="json-learning-") as tmp:
        model = resolve_model("tiny-test", clusters, cache_dir=args.cache or Path(tmp) / "cache",
                              progress=lambda message: None)
        tokenizer = AutoTokenizer.from_pretrained(model.path, padding_side="left")
        lengths = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in rows]
        print(f"{len(rows)} rows; prompt + answer + EOS: {min(lengths)}-{max(lengths)} tokens "
              f"(mean {sum(lengths) / len(lengths):.0f}; max_length {model.max_length})")
        print(f"profile: steps {profile.max_steps}, lr {profile.learning_rate}, batch "
              f"{profile.batch_size}, threads {profile.threads or 1}, lora {profile.lora}",
              flush=True)

        def progress(entry: dict) -> None:
            if "loss" in entry and entry["step"] % 100 == 0:
                print(f"  step {entry['step']}: loss {entry['loss']:.4f}", flush=True)

        out = Path(tmp) / "trained"
        result = train("sft", model.path, rows, None, profile, out, progress=progress)
        print(f"trained {result.steps} steps in {result.duration_s:.0f} s "
              f"({result.duration_s / result.steps:.3f} s/step)")

        trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        prompts = [template.replace("{input}", s["input"]) for s in targets]
        outputs: list[str] = []
        started = time.perf_counter()
        for i in range(0, len(prompts), 32):
            batch = tokenizer(prompts[i:i + 32], return_tensors="pt", padding=True)
            with torch.no_grad():
                ids = trained.generate(**batch, max_new_tokens=128, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
            outputs += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:],
                                              skip_special_tokens=True)
        generate_s = time.perf_counter() - started

    validator = schema_validator(schema)
    hits = dict.fromkeys(gen.FIELDS, 0)
    valid = complete = 0
    for sc, text in zip(targets, outputs, strict=True):
        ok, value, _ = parse_json_output(text)
        valid += bool(ok and validator is not None and validator.is_valid(value))
        right = [ok and isinstance(value, dict) and f in value
                 and json.dumps(value[f]) == json.dumps(sc["expected"][f]) for f in gen.FIELDS]
        for field, good in zip(gen.FIELDS, right, strict=True):
            hits[field] += good
        complete += all(right)
    n = len(targets)
    accuracy = {f: hits[f] / n for f in gen.FIELDS}
    print(f"{args.split} ({n} scenarios, generated in {generate_s:.1f} s): "
          + ", ".join(f"{f} {a:.3f}" for f, a in accuracy.items()))
    print(f"mean per field {sum(accuracy.values()) / len(accuracy):.3f}; schema-valid "
          f"{valid / n:.3f}; every field right {complete / n:.3f}")
    sys.exit(0)


if __name__ == "__main__":
    main()
