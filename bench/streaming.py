"""The text of each row after every generation step: decoded whole, against incrementally.

Stop strings and streamed answers read each row's new text after every step of
``generate()``. Decoding the row's whole text each time costs time quadratic in the
answer's length; the transformers backend's ``_NewText`` decodes only the tokens since the
last complete piece (with the piece before them). This runs both on the same rows (a
batch of ``--rows`` answers of ``--tokens`` tokens each, real text with characters of
several bytes, one step at a time as ``generate()`` grows its ``input_ids``), checks that
they give the same text after every step, and prints the seconds each spent and the ratio.
Only the tokenizer is loaded.

    python bench/streaming.py                      # smollm2-135m's tokenizer, 32 x 1,024
    python bench/streaming.py --model tiny-test --tokens 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

TEXT = ("The bid from news.example came in at a floor of $0.80 with a click-through rate of "
        "1.2%, above the 0.5% line the policy draws; café, naïve and 日本語 pages score "
        "the same. Verdict: ACCEPT — and the next one. ")


def run(texts_of, ids, prompt: int, rows: int) -> tuple[float, list[str]]:
    """Every step's text of every row; the seconds it took and the last texts."""
    started = time.perf_counter()
    last = [""] * rows
    for width in range(prompt + 1, ids.shape[1] + 1):
        step = ids[:, :width]
        for row in range(rows):
            last[row] = texts_of(row, step)
    return time.perf_counter() - started, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="whose tokenizer: a profile")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1024, help="new tokens per row")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from modelsmith.artifacts.models import resolve_model
    from modelsmith.inference.transformers_backend import _NewText
    from modelsmith.specs import load_clusters

    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json", REPO_ROOT)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        resolve_model(args.model, clusters).path)
    tokens = tokenizer(TEXT * (args.tokens // 20 + 1), add_special_tokens=False)["input_ids"]
    prompt = 8
    ids = torch.tensor([[0] * prompt + tokens[row:row + args.tokens]
                        for row in range(args.rows)])
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()

    whole = _NewText(tokenizer, prompt, eos)
    whole.whole = True  # the baseline: the whole text decoded at every step
    slow, expected = run(whole.of, ids, prompt, args.rows)
    fast, got = run(_NewText(tokenizer, prompt, eos).of, ids, prompt, args.rows)
    same = sum(a == b for a, b in zip(expected, got, strict=True))
    # After every step, not only the last: compare on a shorter run, step by step.
    check_whole, check_fast = _NewText(tokenizer, prompt, eos), _NewText(tokenizer, prompt, eos)
    check_whole.whole = True
    short = ids[:, :prompt + min(args.tokens, 200)]
    steps_same = all(check_whole.of(r, short[:, :w]) == check_fast.of(r, short[:, :w])
                     for w in range(prompt + 1, short.shape[1] + 1) for r in range(args.rows))
    print(f"{args.rows} rows x {args.tokens} new tokens, {args.model}'s tokenizer "
          f"({type(tokenizer).__name__}, clean-up of spaces "
          f"{'on' if getattr(tokenizer, 'clean_up_tokenization_spaces', False) else 'off'})")
    print(f"  whole text decoded every step: {slow:7.3f} s "
          f"({slow / args.rows * 1000:.1f} ms per row)")
    print(f"  incremental (_NewText):        {fast:7.3f} s "
          f"({fast / args.rows * 1000:.1f} ms per row)")
    print(f"ratio: {slow / fast:.1f}x faster; last texts the same: {same}/{args.rows}; every "
          f"step's text the same over the first 200 steps: {steps_same}")
    return 0 if same == args.rows and steps_same else 1


if __name__ == "__main__":
    sys.exit(main())
