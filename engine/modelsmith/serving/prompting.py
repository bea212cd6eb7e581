"""The prompt contract written into a serving artifact, so that plain transformers or
``vllm serve`` prompt and decode the model as its evaluation did; and its model card.

- **Chat template.** The eval prompts a model as its base profile was trained
  (``inference.transformers_backend``): with ``chat_template: false`` the text is
  ``SYSTEM\\nPROMPT`` (``PROMPT`` the task's ``prompt_template`` around the input, no
  ``SYSTEM\\n`` without a system prompt) tokenized with the tokenizer's special tokens;
  with ``chat_template: true`` a system and a user message (``PROMPT``) through the base
  tokenizer's chat template with the generation prompt. The artifact's template does the
  same from a conversation's last user message (the raw input; a system message replaces
  the task's system prompt), and is written where transformers reads it (``chat_template``
  in ``tokenizer_config.json`` and ``chat_template.jinja``). Packaging renders it for
  inputs of the suite and refuses an artifact whose template's token ids differ from the
  eval's.
- **Decoding.** ``generation_config.json`` holds the eval's: greedy (``do_sample: false``,
  and ``temperature: 0`` for vLLM, which reads only that), ``max_new_tokens`` as the eval
  sizes it for the output contract and the suite's references (``evaluation.runner``), the
  end-of-sequence ids the eval stops at, and nothing else of the model's own defaults
  (the eval drops them too).
- **Model card** (``README.md``): the task and its output contract, how to prompt it,
  lineage, the evaluations the event log holds for the version (held-out and the decision
  split, dev or unseen, each named), intended use and limitations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.errors import ModelsmithError

if TYPE_CHECKING:
    from modelsmith.events.projection import Candidate
    from modelsmith.specs import LoadedSuite, Specialist
    from modelsmith.specs.models import TaskSpec

#: Inputs the artifact's chat template is checked on besides the suite's (quotes, braces,
#: backslashes, newlines, non-ASCII: what a template's literals could get wrong).
PROBES = ('a "quoted" {input} {{ braces }} {% raw %} \\ back\\slash', "line one\nline two",
          "ünïcödé ✓ 😀", "")


class PromptContractError(ModelsmithError, RuntimeError):
    """The artifact cannot reproduce the eval's prompt; the message says why."""


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def _around(task: TaskSpec, user: str) -> str:
    """A Jinja expression: the task's prompt template with ``user`` for each ``{input}``."""
    return " ~ ".join(f"{_literal(piece)}" if i == 0 else f"{user} ~ {_literal(piece)}"
                      for i, piece in enumerate(task.prompt_template.split("{input}")))


def chat_template(task: TaskSpec, *, chat: bool, base: str | None, before: str = "",
                  after: str = "") -> str:
    """The artifact's chat template for ``task``: a conversation's last user message is the
    input, its system message (else the task's system prompt) the system prompt. ``chat``:
    the base profile's chat template (``base``, its source) wraps them as the eval does;
    else the eval's plain text, between ``before`` and ``after`` (the special tokens the
    tokenizer adds to a plain prompt)."""
    pick = (
        f"{{%- set ns = namespace(system={_literal(task.system_prompt or '')}, user='') -%}}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}\n"
        "{%- elif message['role'] == 'user' -%}{%- set ns.user = message['content'] -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
    )
    head = ("{#- modelsmith: the task's prompt around the last user message, as its "
            "evaluation prompted it -#}\n")
    prompt = _around(task, "ns.user")
    if chat:
        if not base:
            raise PromptContractError("the base profile prompts with a chat template "
                                      "(chat_template: true) but the tokenizer has none")
        return (head + pick
                + "{%- set messages = ([{'role': 'system', 'content': ns.system}] if "
                  f"ns.system else []) + [{{'role': 'user', 'content': {prompt}}}] -%}}\n"
                + base)
    return (head + pick
            + f"{{{{- {_literal(before)} -}}}}"
            + "{%- if ns.system -%}{{- ns.system ~ \"\\n\" -}}{%- endif -%}"
            + f"{{{{- {prompt} -}}}}"
            + f"{{{{- {_literal(after)} -}}}}")


def eval_prompt_ids(tokenizer: Any, task: TaskSpec, chat: bool, text: str) -> list[int]:
    """The token ids the eval (``TransformersBackend._prompt``/``_encode``) feeds the model
    for input ``text``."""
    prompt, system = task.render(text), task.system_prompt
    if chat:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    rendered = f"{system}\n{prompt}" if system else prompt
    return list(tokenizer(rendered, add_special_tokens=True)["input_ids"])


def _special_around(tokenizer: Any) -> tuple[str, str]:
    """The special tokens the tokenizer adds before and after a plain prompt, as text."""
    probe = "x"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    start = next((i for i in range(len(full) - len(bare) + 1)
                  if full[i:i + len(bare)] == bare), None)
    if start is None:
        raise PromptContractError("the tokenizer's special tokens change the prompt's own "
                                  "tokens: a chat template cannot reproduce them")

    def text(ids: list[int]) -> str:
        return "".join(tokenizer.convert_ids_to_tokens(ids))
    return text(full[:start]), text(full[start + len(bare):])


def _template_ids(tokenizer: Any, template: str, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def eos_ids(weights: Path, tokenizer: Any) -> list[int]:
    """The end-of-sequence ids the eval stops at: the model's generation config's, else its
    config's, else the tokenizer's."""
    for name in ("generation_config.json", "config.json"):
        path = weights / name
        if path.is_file():
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if eos is not None:
                return sorted(set(eos if isinstance(eos, list) else [eos]))
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def eval_max_new_tokens(specialist: Specialist, suite: LoadedSuite, tokenizer: Any) -> int:
    """The eval's ``max_new_tokens`` for ``specialist`` on ``suite`` (its default: from
    the output contract and the references of the scenarios it runs)."""
    from modelsmith.evaluation.runner import EvalSettings, default_max_new_tokens, plan_items

    items = plan_items(suite, EvalSettings())
    return default_max_new_tokens(
        specialist.spec.task.output, (item.scenario.expected for item in items),
        lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))


def prompt_files(weights: Path, specialist: Specialist, suite: LoadedSuite, *,
                 chat: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """The files that carry the prompt contract (name -> text: ``chat_template.jinja``,
    ``tokenizer_config.json``, ``generation_config.json``) for the candidate at
    ``weights`` prompted as its base profile says (``chat``), and the decoding they hold."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    task = specialist.spec.task
    base = tokenizer.chat_template if chat else None
    if base is not None and not isinstance(base, str):
        raise PromptContractError("the tokenizer has several named chat templates; "
                                  "packaging needs one")
    before, after = ("", "") if chat else _special_around(tokenizer)
    template = chat_template(task, chat=chat, base=base, before=before, after=after)
    inputs = list(dict.fromkeys([*(s.input for s in [*suite.core, *suite.dev][:8]),
                                 *PROBES]))
    for text in inputs:
        if _template_ids(tokenizer, template, text) != eval_prompt_ids(tokenizer, task, chat,
                                                                       text):
            raise PromptContractError(
                f"the artifact's chat template tokenizes input {text[:60]!r} differently "
                "from the eval's prompt; the artifact would not answer as evaluated")
    eos = eos_ids(weights, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [None])[0]
    decoding: dict[str, Any] = {
        "do_sample": False, "num_beams": 1, "temperature": 0.0,
        "max_new_tokens": eval_max_new_tokens(specialist, suite, tokenizer),
        "eos_token_id": eos[0] if len(eos) == 1 else eos or None,
        "pad_token_id": pad,
    }
    config_path = weights / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() \
        else {}
    config["chat_template"] = template
    return {
        "chat_template.jinja": template,
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "generation_config.json": json.dumps(decoding, indent=2) + "\n",
    }, decoding


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def model_card(specialist: Specialist, version: str, candidate: Candidate,
               manifest: dict[str, Any], decoding: dict[str, Any], suite_name: str,
               chat: bool) -> str:
    """The artifact's ``README.md``."""
    spec = specialist.spec
    task, output = spec.task, spec.task.output
    lineage = candidate.lineage
    if output.kind == "label":
        contract = ("exactly one of the labels " + ", ".join(f"`{label}`"
                                                             for label in output.labels))
    elif output.kind == "json":
        contract = "a JSON document" + (" conforming to the schema in `modelsmith.json`"
                                        if getattr(output, "schema_", None) else "")
    else:
        contract = "free text"
    rows = []
    for record in candidate.evals:
        measured = "yes" if lineage.weights_hash and record.weights_hash == \
            lineage.weights_hash else "no" if record.weights_hash else "not recorded"
        split = record.decision_metric or "none"
        rows.append(f"| {record.at:%Y-%m-%d %H:%M} | {record.suite_hash[:12]} | "
                    f"{_score(record.composite)} | {_score(record.heldout)} | {split} | "
                    f"{_score(record.decision)} | {measured} | "
                    f"{'partial (--limit)' if record.partial else 'full'} |")
    evals = ("\n".join([
        "| evaluated (UTC) | suite hash | composite | held-out | decision split | "
        "decision | these weights | run |",
        "|---|---|---|---|---|---|---|---|", *rows])
        if rows else "No evaluation of this version is in the event log.")
    back = manifest["rollback"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [modelsmith, specialist]",
        "---",
        "",
        f"# {specialist.name} {version}",
        "",
        spec.description.strip() or f"The {specialist.name} specialist.",
        "",
        "## Task",
        "",
        f"- Output: {contract}.",
        f"- System prompt: {_code(task.system_prompt) if task.system_prompt else 'none'}.",
        f"- Prompt template: {_code(task.prompt_template)} (`{{input}}`: the user's text).",
        "",
        "## Prompting",
        "",
        "Send the raw input as the user message; the tokenizer's chat template renders the "
        "system prompt and the prompt template around it exactly as the evaluation did"
        + (" (through the base model's chat template)." if chat else
           " (plain text, no chat markup).")
        + " A system message replaces the task's system prompt.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(ARTIFACT)",
        "model = AutoModelForCausalLM.from_pretrained(ARTIFACT)",
        "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": text}],",
        "                                    add_generation_prompt=True, return_tensors=\"pt\",",
        "                                    return_dict=True)",
        "out = model.generate(**ids)  # generation_config.json: the evaluated decoding",
        "```",
        "",
        f"Decoding (`generation_config.json`): greedy, at most {decoding['max_new_tokens']} "
        f"new tokens, stopping at token id(s) {decoding['eos_token_id']}. `vllm serve "
        "ARTIFACT` reads the same file (temperature 0, max_new_tokens) and template.",
        "",
        "## Lineage",
        "",
        f"- Base model: `{lineage.base_model}`; parent: `{lineage.parent or '-'}`.",
        f"- Weights hash: `{lineage.weights_hash or '-'}` (artifact "
        f"`{manifest['artifact_hash']}`).",
        f"- Dataset hash: `{lineage.dataset_hash or '-'}`; suite hash at training: "
        f"`{lineage.suite_hash or '-'}`; config hash: `{lineage.config_hash or '-'}`.",
        f"- Training run: `{lineage.run_id or '-'}` on `{lineage.host or '-'}`; trainer "
        + (", ".join(f"{k} {v}" for k, v in sorted(lineage.trainer_versions.items())) or "-")
        + ".",
        f"- Registered by event `{candidate.event_id}`; rollback: "
        f"`{back['version'] or '-'}`.",
        "",
        f"## Evaluation (suite `{suite_name}`, from the event log)",
        "",
        "composite: the core split (core, robustness and micro-benchmark scores); held-out: "
        "the held-out split, the promotion gate's evidence, which never steers the loop; "
        "decision: the split the loop decided on (dev, or unseen: core scenarios outside "
        "the candidate's lineage). A row that did not measure these weights or ran only "
        "the first scenarios is marked.",
        "",
        evals,
        "",
        "## Intended use",
        "",
        f"The `{specialist.name}` task as described above, on inputs like the suite's, "
        "prompted and decoded as shown.",
        "",
        "## Limitations",
        "",
        f"- Measured only on the suite `{suite_name}`; inputs unlike its scenarios are not "
        "measured.",
        "- Only the greedy decoding above was evaluated; other sampling, prompts or system "
        "messages change its answers unmeasured.",
        ("- An answer that is not exactly one of the labels is a format failure; a serving "
         "caller should check it." if output.kind == "label" else
         "- Answers are not validated at generation time; a caller should check them."),
        "- A small specialist model: no general knowledge or safety evaluation was run.",
        "",
    ]
    return "\n".join(lines)


def _code(text: str) -> str:
    """``text`` as inline code (newlines shown as ``\\n``)."""
    return "`" + text.replace("\n", "\\n").replace("`", "'") + "`"


