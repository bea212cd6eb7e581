"""The CPU default: a Hugging Face causal LM run with transformers, batched with left padding.

Requests are grouped by ``max_new_tokens``, sorted by prompt length inside a group (less
padding) and generated ``batch_size`` at a time. Greedy rows and sampled rows can share a
batch: sampling happens in a logits processor with one ``torch.Generator`` per request, seeded
from the request's seed, so a seeded request gives the same text whichever batch it lands in.
Stop strings end a row early (per row) and are trimmed from its text. A prompt that leaves
no room for its ``max_new_tokens`` within the model's ``max_length`` is refused, not cut.
A request's listener gets its text as it is generated: a stopping criterion that never
stops sees every row after each step and hands the decoded text to a
:class:`~.streaming.TextStream` (which holds back what a later token or a stop string may
still change), so the final text is exactly what was streamed.
Greedy requests with ``labels`` are answered by label scoring instead (:mod:`.labels`), in
batches of their own; their listeners get the chosen label whole.
A LoRA adapter folder loads on its base and is merged (one version, one model); several
adapters on one base, per row, are :mod:`.adapters`.
"""

from __future__ import annotations

import gc
import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..artifacts.models import ResolvedModel
from .base import Generation, GenerationRequest, InferenceError, Listeners, ProgressFn
from .streaming import TextStream, emit_whole

try:
    import torch
    import transformers
    from transformers import LogitsProcessor, StoppingCriteria
except ImportError as exc:  # pragma: no cover - exercised only without the train extra
    raise InferenceError(
        f"the transformers backend needs torch and transformers ({exc.name} is missing): "
        "pip install -e '.[train]'"
    ) from exc

from . import labels  # after the check above: it imports torch

DEFAULT_THREADS = 1
DTYPES = ("float32", "bfloat16", "float16")


def default_threads() -> int:
    """``$MODELSMITH_THREADS`` if set, else 1 (measured fastest on a shared small CPU box)."""
    raw = os.environ.get("MODELSMITH_THREADS", "").strip()
    if not raw:
        return DEFAULT_THREADS
    try:
        value = int(raw)
    except ValueError as exc:
        raise InferenceError(f"MODELSMITH_THREADS must be a whole number (got '{raw}')") from exc
    if value < 1:
        raise InferenceError(f"MODELSMITH_THREADS must be at least 1 (got {value})")
    return value


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the model hub answers at all (one DNS lookup and TCP connect)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


#: transformers cannot load two models at once in one process: both loads fail, and every
#: later one with "Cannot copy out of meta tensor" (a server whose production and canary get
#: their first requests together). One load at a time.
_LOADING = threading.Lock()


def _load(model: ResolvedModel, dtype: str) -> tuple[Any, Any]:
    """The tokenizer (padding on the left) and the causal LM of ``model``, one load at a
    time in this process."""
    with _LOADING:
        return _load_now(model, dtype)


def _load_now(model: ResolvedModel, dtype: str) -> tuple[Any, Any]:
    where = f"folder {model.path}" if model.path is not None else f"hub id {model.hub_id}"
    # Our own progress reporting covers loading; transformers' bars only add noise.
    transformers.utils.logging.disable_progress_bar()
    # Without a reachable hub, transformers retries for most of a minute; a hub id then
    # loads only from the local Hugging Face cache.
    local_only = model.path is None and not _hub_reachable()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model.source, padding_side="left", local_files_only=local_only
        )
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            model.source, dtype=getattr(torch, dtype), local_files_only=local_only
        )
        if model.adapter is not None:
            from .adapters import merged

            lm = merged(lm, model.adapter)
        _fold_head(lm)
    except (OSError, ValueError) as exc:
        hint = (
            " (no network, or not a model on the hub? Download it on a connected machine "
            "and pass its folder)" if model.path is None else ""
        )
        raise InferenceError(f"could not load the model from {where}: {exc}{hint}") from exc
    return tokenizer, lm


def _contiguous(_head: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def _fold_head(lm: Any) -> None:
    """The output layer's input made contiguous before the product.

    ``generate()`` gives the output layer only each row's last position
    (``hidden[:, -1:, :]``, a strided view). For such an input torch's ``matmul`` folds the
    rows into one matrix product only when the weight requires grad; for a frozen weight
    (a PEFT model's base, an adapter merged by :func:`.adapters.merged`) it runs a batched
    product with the vocabulary-sized weight expanded per row instead: on SmolLM2-135M
    with 32 rows, 266 ms against 37 ms per prompt pass, about 7% of a short batch. A copy
    of the rows' last positions (32 x 576 floats) keeps every model on the folded path.
    """
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear):
        head.register_forward_pre_hook(_contiguous)


class _PerRowSampler(LogitsProcessor):
    """Samples sampled rows with their own generators; greedy decoding then picks that token.

    Rows with temperature 0 are left alone (plain greedy). For the others the scores become
    -inf everywhere except the sampled token.
    """

    def __init__(self, rows: list[tuple[float, float, torch.Generator] | None]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        out = scores
        for index, row in enumerate(self.rows):
            if row is None:
                continue
            temperature, top_p, generator = row
            logits = scores[index].float() / temperature
            probs = torch.softmax(logits, dim=-1)
            if top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                cumulative = torch.cumsum(sorted_probs, dim=-1)
                drop = cumulative - sorted_probs > top_p  # keep the first token always
                sorted_probs = sorted_probs.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            token = torch.multinomial(probs, 1, generator=generator)
            if out is scores:
                out = scores.clone()
            out[index] = float("-inf")
            out[index, token] = 0.0
        return out


class _Row:
    """One row's new tokens (up to its first EOS) and their text so far."""

    def __init__(self) -> None:
        self.seen = 0  # new tokens looked at (EOS and padding after it included)
        self.tokens: list[int] = []
        self.ended = False  # an EOS was seen
        self.settled = ""  # the text of tokens[:read]: complete characters, final
        self.prefix = self.read = 0
        self.text = ""


class _NewText:
    """Each row's new text, ``decode(tokens up to its first EOS, skip_special_tokens=True)``,
    kept up to date step by step for the stop strings and the streams.

    Decoding a row's whole text at every step costs time quadratic in its length (a
    1,024-token answer: 0.1 s per row on SmolLM2's tokenizer). So at each step only the
    tokens since the last complete piece are decoded, together with the piece before them
    (a decoder that drops a leading space at the start of a text then decodes them as it
    would in place: the text-generation-inference method); a piece ending in half a
    character stays pending until the character is whole. A tokenizer that cleans up
    spaces (``clean_up_tokenization_spaces``: a space already decoded may go once
    punctuation follows it) decodes the whole text each step instead.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.eos_ids = eos_ids
        self.whole = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self.rows: dict[int, _Row] = {}

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def of(self, row: int, input_ids: torch.Tensor) -> str:
        """Row ``row``'s new text after the step that left ``input_ids``."""
        state = self.rows.setdefault(row, _Row())
        count = input_ids.shape[1] - self.prompt_len
        if count == state.seen:
            return state.text
        fresh = [] if state.ended else \
            input_ids[row, self.prompt_len + state.seen:].tolist()
        state.seen = count
        for position, token in enumerate(fresh):
            if token in self.eos_ids:
                fresh, state.ended = fresh[:position], True
                break
        if not fresh:
            return state.text
        state.tokens += fresh
        if self.whole:
            state.text = self._decode(state.tokens)
            return state.text
        before = self._decode(state.tokens[state.prefix:state.read])
        after = self._decode(state.tokens[state.prefix:])
        piece = after[len(before):]
        if len(after) > len(before) and not after.endswith("\ufffd"):
            state.settled += piece
            state.prefix, state.read, piece = state.read, len(state.tokens), ""
        state.text = state.settled + piece
        return state.text


class _StopStrings(StoppingCriteria):
    """Per-row stop strings: a row is done once its new text contains one of its strings."""

    def __init__(self, texts: _NewText, stops: list[tuple[str, ...]]) -> None:
        self.texts = texts
        self.stops = stops
        self.done = [False] * len(stops)
        #: how many new tokens a row had when a stop string ended it
        self.done_at: list[int | None] = [None] * len(stops)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for index, stops in enumerate(self.stops):
            if stops and not self.done[index]:
                text = self.texts.of(index, input_ids)
                if any(stop in text for stop in stops):
                    self.done[index] = True
                    self.done_at[index] = input_ids.shape[1] - self.texts.prompt_len
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class _Streams(StoppingCriteria):
    """Never stops a row: after each step, hands each streamed row's text so far (up to
    its first EOS; nothing after a stop string ended it) to its :class:`TextStream`."""

    def __init__(self, texts: _NewText, streams: list[TextStream | None],
                 stops: _StopStrings) -> None:
        self.texts = texts
        self.streams = streams
        self.stops = stops
        self.ended = [stream is None for stream in streams]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for index, stream in enumerate(self.streams):
            if stream is None or self.ended[index]:
                continue
            stream.update(self.texts.of(index, input_ids))
            self.ended[index] = (self.stops.done[index] or stream.stopped
                                  or self.texts.rows[index].ended)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _trim(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersBackend:
    """A causal LM loaded once with transformers; batched generation with left padding."""

    name = "transformers"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        threads: int | None = None,
        batch_size: int = 16,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        if batch_size < 1:
            raise InferenceError(f"batch_size must be at least 1 (got {batch_size})")
        if dtype not in DTYPES:
            raise InferenceError(f"unknown dtype '{dtype}' (choose one of: {', '.join(DTYPES)})")
        self.resolved = model
        self.model_ref = str(model.adapter or model.source)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads if threads is not None else default_threads()
        if self.threads < 1:
            raise InferenceError(f"threads must be at least 1 (got {self.threads})")
        torch.set_num_threads(self.threads)  # process-wide: torch has no per-model setting
        self.tokenizer, self.model = _load(model, dtype)
        self._move_to(device)
        self._take_special_tokens()
        if model.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise InferenceError(
                f"model '{model.ref}' is set to use a chat template (chat_template: true) but its "
                "tokenizer has none; set chat_template: false for its profile"
            )

    def _move_to(self, device: str) -> None:
        try:
            self.model.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise InferenceError(f"cannot move the model to device '{device}': {exc}") from exc
        self.model.eval()

    def _take_special_tokens(self) -> None:
        """Padding (EOS when the tokenizer has none) and end-of-sequence ids; the model's
        generation config reduced to them."""
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None
                                     else [])
        self.pad_id: int = int(self.tokenizer.pad_token_id)
        # Generation is defined by the request alone: drop the model's own defaults
        # (repetition penalty, sampling switches, ...), which generate() would merge in.
        self.model.generation_config = transformers.GenerationConfig(
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.pad_id,
            bos_token_id=self.model.generation_config.bos_token_id,
        )

    # ------------------------------------------------------------------ helpers

    def _prompt(self, request: GenerationRequest) -> str:
        if self.resolved.chat_template:
            messages = []
            if request.system:
                messages.append({"role": "system", "content": request.system})
            messages.append({"role": "user", "content": request.prompt})
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        if request.system:
            return f"{request.system}\n{request.prompt}"
        return request.prompt

    def _encode(self, request: GenerationRequest, index: int) -> list[int]:
        """The prompt's token ids; a prompt that leaves no room for ``max_new_tokens``
        within the model's ``max_length`` is an error, never cut to fit (cutting drops the
        instructions at its start without a word)."""
        ids = self.tokenizer(
            self._prompt(request), add_special_tokens=not self.resolved.chat_template
        )["input_ids"]
        if len(ids) + request.max_new_tokens > self.resolved.max_length:
            raise InferenceError(
                f"request {index}: the prompt has {len(ids)} tokens and asks for "
                f"{request.max_new_tokens} new ones, more than model '{self.resolved.ref}' "
                f"takes (max_length {self.resolved.max_length}); shorten the prompt, lower "
                "max_new_tokens or raise the model profile's max_length"
            )
        return ids

    def _check(self) -> None:
        if self.model is None:
            raise InferenceError("this backend was closed; build a new one")

    # ------------------------------------------------------------------ Backend API

    def count_tokens(self, text: str) -> int:
        self._check()
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressFn | None = None,
        listeners: Listeners | None = None,
    ) -> list[Generation]:
        self._check()
        listening = list(listeners or [])
        listening += [None] * (len(requests) - len(listening))
        total = len(requests)
        results: list[Generation | None] = [None] * total
        groups: dict[tuple[int, bool], list[int]] = {}
        for index, request in enumerate(requests):
            if request.max_new_tokens < 1:
                raise InferenceError(
                    f"max_new_tokens must be at least 1 (request {index} asks for "
                    f"{request.max_new_tokens})"
                )
            groups.setdefault((request.max_new_tokens, labels.scored(request)), []).append(index)
        encoded = [self._encode(r, i) for i, r in enumerate(requests)]
        done = 0
        for max_new, scored in sorted(groups):
            order = sorted(groups[max_new, scored], key=lambda i: len(encoded[i]))
            answer = self._label_batch if scored else self._generate_batch
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for index, generation in zip(
                    batch, answer(
                        [requests[i] for i in batch], [encoded[i] for i in batch], max_new,
                        [listening[i] for i in batch],
                    ), strict=True,
                ):
                    results[index] = generation
                done += len(batch)
                if progress is not None:
                    progress(done, total)
        return [r for r in results if r is not None]

    def _generate_batch(
        self,
        requests: list[GenerationRequest],
        encoded: list[list[int]],
        max_new_tokens: int,
        listeners: list[Any] | None = None,
    ) -> list[Generation]:
        input_ids, attention = self._pad_left(encoded)
        width = input_ids.shape[1]
        samplers = self._samplers(requests)
        texts = _NewText(self.tokenizer, width, self.eos_ids)
        stops = _StopStrings(texts, [tuple(r.stop) for r in requests])
        streams = [None if listener is None else TextStream(listener, request.stop)
                   for listener, request in zip(listeners or [None] * len(requests),
                                                requests, strict=True)]
        criteria: list[StoppingCriteria] = [stops]
        if any(streams):
            criteria.append(_Streams(texts, streams, stops))
        output, latency_ms = self._run(input_ids, attention, samplers, criteria,
                                       max_new_tokens)
        new = output[:, width:].tolist()
        generations = []
        for row, request in enumerate(requests):
            # A row ends at its first EOS or when a stop string ended it; generate() fills
            # the rest of a finished row with padding.
            end = len(new[row]) if stops.done_at[row] is None else stops.done_at[row]
            text, tokens, finish = self._finish(new[row][:end], request, max_new_tokens)
            if streams[row] is not None:
                text = streams[row].close(text)  # what was streamed, and the rest
            generations.append(
                Generation(
                    text=text,
                    completion_tokens=tokens,
                    latency_ms=latency_ms,
                    finish_reason=finish,
                    meta={
                        "batch_size": len(requests),
                        "prompt_tokens": len(encoded[row]),
                    },
                )
            )
        return generations

    def _label_batch(self, requests: list[GenerationRequest], encoded: list[list[int]],
                     max_new_tokens: int,
                     listeners: list[Any] | None = None) -> list[Generation]:
        """Greedy label requests answered by label scoring (:mod:`.labels`); a listener
        gets the label whole."""
        answered = labels.answer_batch(self, requests, encoded, max_new_tokens,
                                       self._generate_batch)
        emit_whole(listeners, answered)
        return answered

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's input ids, padded on the left to the longest row, and its mask."""
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        return input_ids, attention

    def _samplers(
        self, requests: list[GenerationRequest]
    ) -> list[tuple[float, float, torch.Generator] | None]:
        """Per row: None for greedy, else its temperature, top-p and seeded generator."""
        samplers: list[tuple[float, float, torch.Generator] | None] = []
        for request in requests:
            if request.temperature <= 0:
                samplers.append(None)
                continue
            generator = torch.Generator(device=self.device)
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            generator.manual_seed(seed)
            samplers.append((request.temperature, request.top_p, generator))
        return samplers

    def _run(self, input_ids: torch.Tensor, attention: torch.Tensor,
             samplers: list[tuple[float, float, torch.Generator] | None],
             criteria: list[StoppingCriteria],
             max_new_tokens: int) -> tuple[torch.Tensor, float]:
        """One ``generate()`` call over the batch: prompt and new tokens per row, and the
        call's wall time in milliseconds."""
        config = transformers.GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
        )
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    generation_config=config,
                    logits_processor=transformers.LogitsProcessorList([_PerRowSampler(samplers)]),
                    stopping_criteria=transformers.StoppingCriteriaList(criteria),
                    **self._generate_options(),
                )
        except RuntimeError as exc:
            raise InferenceError(
                f"generation failed on a batch of {len(samplers)}: {exc} "
                "(out of memory? lower the batch size)"
            ) from exc
        return output, (time.perf_counter() - started) * 1000.0

    def _generate_options(self) -> dict[str, Any]:
        """More keyword arguments for this batch's ``generate()`` (none: one model)."""
        return {}

    def _finish(self, tokens: list[int], request: GenerationRequest,
                max_new_tokens: int) -> tuple[str, int, str]:
        """A row's text (cut at its first EOS and its first stop string), its token count
        and its finish reason."""
        hit_eos = False
        for position, token in enumerate(tokens):
            if token in self.eos_ids:
                tokens, hit_eos = tokens[:position + 1], True
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = _trim(text, request.stop)
        finish = "stop" if hit_eos or stopped or len(tokens) < max_new_tokens else "length"
        return text, len(tokens), finish

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.tokenizer = None
        gc.collect()
