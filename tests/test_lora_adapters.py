"""Versions as LoRA adapters of one base: training keeps the adapter (a child of an adapter
is still an adapter of the base), one backend answers a batch that mixes adapters as each
merged adapter answers alone, the service loads a base once for production, canary and
shadow and batches their rows together, and ``package`` merges an adapter into a plain
folder."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT
from modelsmith.artifacts.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_MANIFEST,
    ADAPTER_WEIGHTS,
    adapter_base,
    is_adapter,
)
from modelsmith.artifacts.models import profile_digest, resolve_model
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.inference.base import GenerationRequest
from modelsmith.specs import HyperParams, LoraConfig, load_repository

pytest.importorskip("peft")
pytest.importorskip("trl")

PROMPTS = ["Bid: domain=news.example ctr=2.10% floor=$0.50 format=banner\nVerdict:",
           "Bid: domain=casino-ads.example ctr=0.10% floor=$2.00 format=video\nVerdict:",
           "The quick brown fox"]


@pytest.fixture(scope="module")
def clusters():
    return load_repository(REPO_ROOT).clusters


@pytest.fixture(scope="module")
def tiny(clusters, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSMITH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return resolve_model("tiny-test", clusters, progress=lambda _m: None).path


@pytest.fixture(autouse=True)
def cache(tiny, monkeypatch):
    """The cache tiny-test was built in: an adapter's base profile resolves to it."""
    monkeypatch.setenv("MODELSMITH_CACHE", str(tiny.parent.parent))


def random_adapter(base, out, seed, r=4):
    """A LoRA adapter of ``base`` with random (nonzero) A and B: it changes the answers."""
    import torch
    import transformers
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = get_peft_model(model, PeftLora(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                          task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    lora.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(out)
    from modelsmith.artifacts.adapters import write_adapter_base
    from modelsmith.artifacts.models import cached_base

    write_adapter_base(out, cached_base(base))
    return out


def _lora_state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / ADAPTER_WEIGHTS))


# --------------------------------------------------------------------------- training


def test_lora_training_keeps_an_adapter_of_the_base_and_a_child_stays_one(
        clusters, tiny, tmp_path):
    from modelsmith.inference import make_backend
    from modelsmith.training.trainers import train

    rows = [{"prompt": p, "completion": " ACCEPT"} for p in PROMPTS[:2]] * 2
    profile = HyperParams(device="cpu", threads=1, lora=LoraConfig(r=4, alpha=8),
                          learning_rate=0.01, batch_size=4, grad_accum=1, max_steps=2,
                          num_generations=2, max_completion_length=3, beta=0.0, seed=0)
    v1 = train("sft", tiny, rows, None, profile, tmp_path / "v1", clusters=clusters).out_dir
    assert is_adapter(v1) and (v1 / ADAPTER_WEIGHTS).is_file()
    assert (v1 / "tokenizer.json").is_file() and not (v1 / "model.safetensors").exists()
    base = adapter_base(v1)
    assert (base.profile, base.path) == ("tiny-test", str(tiny))
    assert base.source_hash == profile_digest(clusters.models["tiny-test"])
    assert json.loads((v1 / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == str(tiny)

    # A second version trained from the first: the first's adapter trained on, on the base.
    v2 = train("sft", v1, rows, None, profile.model_copy(update={"lora": LoraConfig(r=8)}),
               tmp_path / "v2", clusters=clusters).out_dir
    assert is_adapter(v2) and not (v2 / "model.safetensors").exists()
    assert adapter_base(v2) == base
    config = json.loads((v2 / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(tiny)
    assert config["r"] == 4  # the parent's adapter, not a fresh one of the profile's rank
    first, second = _lora_state(v1), _lora_state(v2)
    assert first.keys() == second.keys()
    assert any(not (first[k] == second[k]).all() for k in first)  # trained further

    backend = make_backend(str(v2), clusters, threads=1)  # as evaluation loads a candidate
    try:
        assert backend.model_ref == str(v2)
        [answer] = backend.generate([GenerationRequest(PROMPTS[0], max_new_tokens=3)])
    finally:
        backend.close()
    assert answer.completion_tokens >= 1


# --------------------------------------------------------------------------- inference

LABELS = ("yes", "no", "not sure")


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return {name: random_adapter(tiny, folder / name, seed)
            for seed, name in enumerate(("a", "b", "c"), start=1)}


@pytest.mark.parametrize("path", ["fused", "peft"])
def test_a_mixed_batch_answers_as_each_adapter_merged_and_run_alone(clusters, tiny, adapters,
                                                                   path, monkeypatch):
    from modelsmith.inference import adapters as multi
    from modelsmith.inference.adapters import BASE, MultiAdapterBackend
    from modelsmith.inference.transformers_backend import TransformersBackend

    if path == "peft":  # as for adapters the fused path does not take: PEFT's mixed batch
        monkeypatch.setattr(multi, "_lora_layers", lambda model: {})

    shared = MultiAdapterBackend(resolve_model("tiny-test", clusters), threads=1, batch_size=16)
    for name, folder in adapters.items():
        shared.attach(name, folder)
    assert bool(shared._fused_layers()) == (path == "fused")
    names = [*adapters, BASE]
    requests = [GenerationRequest(prompt, max_new_tokens=6, adapter=name)
                for prompt in PROMPTS for name in names]
    # Label requests (answered by label scoring) in the same call, each adapter's own.
    scored = [GenerationRequest(prompt, max_new_tokens=6, adapter=name, labels=LABELS)
              for prompt in PROMPTS for name in names]
    mixed = shared.generate(requests + scored)
    generated, mixed = mixed[len(requests):], mixed[:len(requests)]
    assert {g.meta["batch_size"] for g in mixed} == {len(requests)}  # one batch, all mixed
    assert all(g.meta["constrained"] == "labels" for g in generated)
    with pytest.raises(Exception, match="no adapter 'd'"):
        shared.generate([GenerationRequest(PROMPTS[0], adapter="d")])
    shared.close()

    alone = {}
    for name in names:
        resolved = resolve_model(str(adapters[name]) if name != BASE else "tiny-test", clusters)
        backend = TransformersBackend(resolved, threads=1)
        for prompt in PROMPTS:
            [alone[prompt, name]] = backend.generate(
                [GenerationRequest(prompt, max_new_tokens=6)])
            [alone[prompt, name, "labels"]] = backend.generate(
                [GenerationRequest(prompt, max_new_tokens=6, labels=LABELS)])
        backend.close()
    for request, generation in zip(requests, mixed, strict=True):
        assert generation.text == alone[request.prompt, request.adapter].text, request
    for request, generation in zip(scored, generated, strict=True):
        assert generation.text == alone[request.prompt, request.adapter, "labels"].text, \
            request
    # The adapters do change the answers: the comparison above could fail.
    assert len({tuple(alone[p, n].text for p in PROMPTS) for n in names}) > 1


def test_the_output_layer_of_a_frozen_model_runs_one_matrix_product(clusters, adapters):
    """generate() hands the output layer each row's last position, a strided view; torch
    folds such rows into one matrix product only for a weight that requires grad, and a
    PEFT base's or a merged adapter's weights are frozen: without the fold the output layer
    runs a batched product with its vocabulary-sized weight copied per row."""
    from torch.profiler import ProfilerActivity, profile

    from modelsmith.inference.adapters import MultiAdapterBackend
    from modelsmith.inference.transformers_backend import TransformersBackend

    shared = MultiAdapterBackend(resolve_model("tiny-test", clusters), threads=1)
    for name, folder in adapters.items():
        shared.attach(name, folder)
    alone = TransformersBackend(resolve_model(str(adapters["a"]), clusters), threads=1)
    vocab = shared.model.get_output_embeddings().weight.shape[0]
    try:
        for backend, adapter in ((shared, "b"), (alone, None)):
            assert not any(p.requires_grad for p in backend.model.parameters())
            requests = [GenerationRequest(p, max_new_tokens=2, adapter=adapter)
                        for p in PROMPTS]
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as trace:
                backend.generate(requests)
            batched = [e.input_shapes for e in trace.events()
                       if e.name == "aten::bmm" and vocab in e.input_shapes[1]]
            assert batched == [], batched
            products = [e for e in trace.events() if e.name in ("aten::mm", "aten::addmm")
                        and e.input_shapes and vocab in e.input_shapes[-1]]
            assert len(products) == 2  # one per step: the prompt pass, then one new token
    finally:
        shared.close()
        alone.close()


# --------------------------------------------------------------------------- serving


def _adapter_fleet(root, adapters, promotions):
    """Candidates v1..v3, each a LoRA adapter of tiny-test, with ``promotions``."""
    import shutil

    events = []
    for version, folder in zip(("v1", "v2", "v3"), adapters.values(), strict=True):
        shutil.copytree(folder, root / "models" / "rtb-quality" / version)
        events.append(CandidateRegistered(version=version,
                                          lineage=Lineage(base_model="tiny-test")))
    GitEventStore(root).append("rtb-quality", [Event.new(p, actor="test")
                                               for p in [*events, *promotions]], 0)


def test_production_canary_and_shadow_adapters_share_one_base_and_one_batch(
        demo_repo, tmp_path, monkeypatch, tiny, adapters):
    import transformers

    from modelsmith.inference.adapters import MultiAdapterBackend
    from test_serving_server import service_of

    _adapter_fleet(demo_repo, adapters, [
        Promoted(version="v1", stage="production"),
        Promoted(version="v2", stage="canary", traffic=0.5),
        Promoted(version="v3", stage="shadow")])
    loads, batches = [], []
    real_load = transformers.AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(
        lambda cls, *a, **k: (loads.append(a[0]), real_load(cls, *a, **k))[1]))
    real_options = MultiAdapterBackend._generate_options
    monkeypatch.setattr(MultiAdapterBackend, "_generate_options",
                        lambda self: (batches.append(sorted(set(self._rows))),
                                      real_options(self))[1])
    service = service_of(demo_repo, max_wait_ms=500)
    try:
        views = {v: service.batcher("rtb-quality", v) for v in ("v1", "v2", "v3")}
        assert len(loads) == 1 and service._bases.loads == 1  # one base for three versions
        assert len({id(view.shared) for view in views.values()}) == 1
        answers = {}

        def ask(version):
            answers[version] = views[version].generate(
                GenerationRequest(PROMPTS[0], max_new_tokens=4), 120)

        threads = [threading.Thread(target=ask, args=(v,)) for v in views]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert set(answers) == set(views)
        assert any(len(batch) > 1 for batch in batches), batches  # versions in one batch
        # Through the service: answered (and mirrored to the shadow) on the shared base.
        body = {"model": "rtb-quality", "user": "someone",
                "messages": [{"role": "user", "content": "domain=news.example ctr=2.1%"}]}
        done = service.complete(body)
        assert done["modelsmith"]["version"] in ("v1", "v2")
        service.settle(120)
        assert service.shadow_log[-1]["shadow"] == "v3"
        assert len(loads) == 1
        backend = views["v1"].shared.backend
        views["v3"].close()  # retired: its adapter detached, the base stays for the others
        assert sorted(backend.adapters) == ["rtb-quality--v1", "rtb-quality--v2"]
        assert backend.model is not None
    finally:
        service.close(timeout=60)
    assert not backend.adapters and backend.model is None  # the last version closed it


# --------------------------------------------------------------------------- packaging


def test_package_of_an_adapter_version_is_a_plain_folder(demo_repo, tmp_path, monkeypatch,
                                                         tiny, adapters):
    import torch
    import transformers

    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.cli import cli
    from modelsmith.inference.adapters import merged

    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    ArtifactStore(demo_repo).ensure_initialised()
    _adapter_fleet(demo_repo, adapters, [Promoted(version="v1", stage="production")])
    out = tmp_path / "artifact"
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "package", "rtb-quality", "v2",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not is_adapter(out) and not (out / ADAPTER_MANIFEST).exists()
    plain = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    expected = merged(base, adapters["b"]).state_dict()
    got = plain.state_dict()
    assert all(torch.allclose(got[k], expected[k]) for k in expected)
    assert any(not torch.allclose(got[k], base_v) for k, base_v in
               transformers.AutoModelForCausalLM.from_pretrained(
                   tiny, dtype=torch.float32).state_dict().items())
