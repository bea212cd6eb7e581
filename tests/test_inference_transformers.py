"""The transformers backend on the tiny random model: the backend contract (batching,
determinism, stops, ...), then seeded sampling, token budgets, prompts too long, chat templates,
settings and the factory."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend_contract import BackendContract, greedy
from modelsmith.artifacts import ResolvedModel, resolve_model
from modelsmith.inference import Backend, GenerationRequest, InferenceError, make_backend
from modelsmith.specs import load_clusters

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Bid: domain=news.example ctr=1.2% floor=$0.80 format=banner\nVerdict:",
    "Bid: domain=casino-ads.example ctr=2.1% floor=$1.50 format=video\nVerdict:",
    "Bid: ctr=0.3%\nVerdict:",
    "Verdict:",
    "Bid: domain=sports.example ctr=0.3% floor=$0.40 format=native and a much longer tail "
    "of words so that this prompt needs many more tokens than the others\nVerdict:",
    "Bid: domain=weather.example ctr=3.5% floor=$2.00 format=banner\nVerdict:",
    "domain=clickfarm.example",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ResolvedModel:
    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    cache = tmp_path_factory.mktemp("cache")
    return resolve_model("tiny-test", clusters, cache_dir=cache, progress=lambda _m: None)


@pytest.fixture(scope="module")
def backend(tiny: ResolvedModel) -> Iterator[Backend]:
    from modelsmith.inference.transformers_backend import TransformersBackend

    loaded = TransformersBackend(tiny, threads=1, batch_size=4)
    yield loaded
    loaded.close()


class TestTransformersBackend(BackendContract):
    name = "transformers"
    prompts = PROMPTS  # of many lengths, more than a batch of 4

    @pytest.fixture
    def model_ref(self, tiny):
        return str(tiny.path)

    @pytest.fixture
    def fresh_backend(self, tiny):
        from modelsmith.inference.transformers_backend import TransformersBackend

        return TransformersBackend(tiny, threads=1)

    @pytest.fixture
    def missing_backend(self, tiny, tmp_path):
        from modelsmith.inference.transformers_backend import TransformersBackend

        return lambda: TransformersBackend(dataclasses.replace(tiny, path=tmp_path / "none"),
                                           threads=1)


def test_seeded_sampling_is_reproducible(backend: Backend) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return greedy(PROMPTS[0], 8, temperature=1.0, top_p=0.95, seed=seed)

    alone = backend.generate([sampled(7)])[0].text
    mixed = backend.generate([greedy(PROMPTS[1]), sampled(7), sampled(7), greedy(PROMPTS[4])])
    assert mixed[1].text == alone and mixed[2].text == alone
    others = {backend.generate([sampled(seed)])[0].text for seed in range(5)}
    assert len(others) > 1
    # greedy rows are unaffected by sampled neighbours
    assert mixed[0].text == backend.generate([greedy(PROMPTS[1])])[0].text


def test_streamed_text_comes_token_by_token_and_equals_the_answer(backend: Backend) -> None:
    """The listener hears the text while ``generate()`` runs, in more than one piece, and
    the pieces are the answer; with a stop string taken from the middle of the answer,
    nothing from the stop string on is ever heard, batched beside a row without one."""
    request = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=12, temperature=1.5,
                                seed=7)  # varied text (the tiny model's greedy text repeats)
    (whole,) = backend.generate([request])
    pieces: list[str] = []
    (streamed,) = backend.generate([request], listeners=[pieces.append])
    assert streamed.text == whole.text == "".join(pieces)
    assert len(pieces) > 1, pieces  # growth per step, not the answer at the end
    cut = whole.text[len(whole.text) // 2:][:2]
    assert len(cut) == 2 and whole.text.index(cut) > 0, whole.text
    heard: list[list[str]] = [[], []]
    pair = backend.generate([dataclasses.replace(request, stop=(cut, "never-seen")),
                             greedy(PROMPTS[-1], 12)],
                            listeners=[heard[0].append, heard[1].append])
    assert pair[0].text == whole.text[:whole.text.index(cut)] == "".join(heard[0])
    assert cut not in "".join(heard[0])
    assert "".join(heard[1]) == pair[1].text == backend.generate([greedy(PROMPTS[-1], 12)])[0].text


def _metaspace_tokenizer(texts: list[str]):
    """A SentencePiece-style tokenizer (Metaspace: a word's leading space is part of its
    token, and decoding drops the space at the start of a text), trained here."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "</s>", *alphabet], show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>",
                                                unk_token="<unk>")


@pytest.mark.parametrize("kind", ["byte-level", "metaspace", "clean-up"])
def test_the_text_of_each_step_is_the_whole_decode_of_the_tokens_so_far(tiny, kind):
    """Stop strings and streams read each row's text after every step from ``_NewText``,
    which decodes only the tokens since the last complete piece: after every step its
    text is what decoding the row's new tokens (to the first EOS) whole gives, with
    characters of several bytes split across tokens, a decoder that drops a leading
    space, special tokens, invalid bytes, and a tokenizer that cleans up spaces (decoded
    whole each step)."""
    import random

    import torch
    import transformers

    from modelsmith.inference.transformers_backend import _NewText

    sample = ["Bid: café naïve — 日本語 🎉 ok.", "a , b . c ! d ?", "Verdict: ACCEPT the bid"]
    if kind == "metaspace":
        tokenizer = _metaspace_tokenizer(sample * 20)
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny.path)
        tokenizer.clean_up_tokenization_spaces = kind == "clean-up"
    eos = tokenizer.eos_token_id
    rng = random.Random(3)
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in sample]
    rows.append([rng.randrange(len(tokenizer)) for _ in range(60)])  # any ids, bytes cut
    rows[1] = [*rows[1][:4], eos, *rows[1][4:]]  # an EOS midway: the text stops there
    width = max(len(r) for r in rows)
    prompt = 3
    texts = _NewText(tokenizer, prompt, {eos})
    assert texts.whole == (kind == "clean-up")
    ids = torch.full((len(rows), prompt), 7, dtype=torch.long)
    for step in range(width):
        column = [r[step] if step < len(r) else eos for r in rows]
        ids = torch.cat([ids, torch.tensor(column).unsqueeze(1)], dim=1)
        for index, row in enumerate(rows):
            tokens = row[:step + 1]
            if eos in tokens:
                tokens = tokens[:tokens.index(eos)]
            whole = tokenizer.decode(tokens, skip_special_tokens=True)
            assert texts.of(index, ids) == whole, (kind, index, step)
            assert texts.of(index, ids) == whole  # asked again in the same step
    assert any("\ufffd" in tokenizer.decode(r[:k]) for r in rows for k in range(len(r)))


def test_max_new_tokens_respected(backend: Backend) -> None:
    requests = [greedy(PROMPTS[0], 1), greedy(PROMPTS[1], 3), greedy(PROMPTS[2], 6),
                greedy(PROMPTS[0], 3)]
    results = backend.generate(requests)
    for request, result in zip(requests, results, strict=True):
        assert 1 <= result.completion_tokens <= request.max_new_tokens
        if result.completion_tokens == request.max_new_tokens:
            assert result.finish_reason == "length"
    # a shorter budget gives a prefix of the longer one (same prompt, greedy)
    assert results[3].text.startswith(results[0].text)
    with pytest.raises(InferenceError, match="max_new_tokens"):
        backend.generate([greedy(PROMPTS[0], 0)])


def test_progress_per_batch_and_meta(backend: Backend) -> None:
    calls: list[tuple[int, int]] = []
    requests = [greedy(p, 2) for p in PROMPTS] + [greedy(PROMPTS[0], 3)] * 2
    results = backend.generate(requests, progress=lambda done, total: calls.append((done, total)))
    # Progress comes per batch: 7 requests of 2 tokens in batches of 4 (2), then 2 of 3 (1).
    assert [d for d, _ in calls] == [4, 7, 9]
    first_batch = [r for r in results[:len(PROMPTS)] if r.meta["batch_size"] == 4]
    assert len(first_batch) == 4 and len({r.latency_ms for r in first_batch}) == 1


def test_a_prompt_too_long_for_the_model_is_an_error_not_cut(backend: Backend,
                                                             tiny: ResolvedModel) -> None:
    long_prompt = "floor=$0.80 " * 200 + "\nVerdict:"
    tokens = backend.count_tokens(long_prompt)
    assert tokens > tiny.max_length
    with pytest.raises(InferenceError) as raised:
        backend.generate([greedy(PROMPTS[0], 4), greedy(long_prompt, 4)])
    message = str(raised.value)
    assert message.startswith("request 1: the prompt has ")
    assert "asks for 4 new ones" in message and f"max_length {tiny.max_length}" in message
    # A prompt that fits only without its new tokens is refused too: nothing is cut.
    fits = backend.generate([greedy(PROMPTS[0], 4)])[0]
    room = tiny.max_length - fits.meta["prompt_tokens"]
    assert backend.generate([greedy(PROMPTS[0], room)])[0].meta["prompt_tokens"] == \
        fits.meta["prompt_tokens"]
    with pytest.raises(InferenceError, match=f"asks for {room + 1} new ones"):
        backend.generate([greedy(PROMPTS[0], room + 1)])


def test_system_prompt_plain_and_chat_template(tiny: ResolvedModel) -> None:
    from modelsmith.inference.transformers_backend import TransformersBackend

    plain = TransformersBackend(tiny, threads=1)
    chat = TransformersBackend(dataclasses.replace(tiny, chat_template=True), threads=1)
    try:
        request = greedy("domain=news.example", 4, system="Answer ACCEPT or REJECT.")
        assert plain._prompt(request) == "Answer ACCEPT or REJECT.\ndomain=news.example"
        rendered = chat._prompt(request)
        assert rendered.startswith("<|im_start|>system\nAnswer ACCEPT or REJECT.<|im_end|>")
        assert rendered.endswith("<|im_start|>assistant\n")
        plain_out = plain.generate([request])[0]
        chat_out = chat.generate([request, greedy("domain=news.example", 4)])
        assert chat_out[0].meta["prompt_tokens"] > plain_out.meta["prompt_tokens"]
        assert all(g.finish_reason in ("stop", "length") for g in chat_out)
    finally:
        plain.close()
        chat.close()
    with pytest.raises(InferenceError, match="closed"):
        plain.generate([request])


def test_threads_setting(tiny: ResolvedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from modelsmith.inference.transformers_backend import TransformersBackend, default_threads

    monkeypatch.delenv("MODELSMITH_THREADS", raising=False)
    assert default_threads() == 1
    monkeypatch.setenv("MODELSMITH_THREADS", "lots")
    with pytest.raises(InferenceError, match="MODELSMITH_THREADS"):
        TransformersBackend(tiny)
    monkeypatch.setenv("MODELSMITH_THREADS", "1")
    backend = TransformersBackend(tiny)
    assert backend.threads == 1 and torch.get_num_threads() == 1
    backend.close()
    with pytest.raises(InferenceError, match="dtype"):
        TransformersBackend(tiny, dtype="float8")


def test_factory_builds_the_transformers_backend(tmp_path: Path) -> None:
    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    backend = make_backend("tiny-test", clusters, threads=1, batch_size=2,
                           cache_dir=tmp_path, progress=lambda _m: None)
    try:
        assert backend.name == "transformers"
        assert backend.generate([greedy(PROMPTS[0], 2)])[0].completion_tokens >= 1
    finally:
        backend.close()
    with pytest.raises(InferenceError, match="unknown backend 'tpu'"):
        make_backend("tiny-test", clusters, backend="tpu")
    with pytest.raises(InferenceError, match="unknown model"):
        make_backend("nope", clusters, cache_dir=tmp_path)
    with pytest.raises(InferenceError, match="batch_size"):
        make_backend("tiny-test", clusters, batch_size=0, cache_dir=tmp_path)


def test_hub_id_without_network_is_an_inference_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # offline mode, as on a machine without network (read at call time, not from the env)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InferenceError, match="could not load the model from hub id"):
        make_backend("modelsmith-test/no-such-model", None)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_without_vllm_is_a_clear_error(tiny: ResolvedModel, tmp_path: Path) -> None:
    from modelsmith.inference.vllm_backend import VLLMBackend

    with pytest.raises(InferenceError,
                       match=r"vllm is not installed: pip install -e '\.\[gpu\]'"):
        VLLMBackend(tiny)
    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    with pytest.raises(InferenceError, match="vllm is not installed"):
        make_backend("smollm2-135m", clusters, backend="vllm", cache_dir=tmp_path)
    assert not (tmp_path / "models").exists()  # failed before building anything
