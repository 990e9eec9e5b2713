"""Model cards: markdown with YAML front matter, as on the Hugging Face Hub.

A card is generated for every version from its model, lineage and metrics and stored
as the version's README.md, so exports carry it and the Hub could display it. The
front matter follows the Hub's model-card metadata (license, base_model, tags,
datasets, pipeline_tag, library_name, model-index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

PIPELINE_TAGS = {"causal-lm": "text-generation", "classification": "text-classification"}


@dataclass
class CardData:
    name: str  # namespace/name
    version: int
    task: str = "causal-lm"
    description: str = ""
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    kind: str = "full"  # full | adapter
    base_model: str | None = None  # namespace/name@version of the base
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] | None = None
    #: the store's OpenAI-compatible API, for the card's example (`Settings.api_base`)
    api_base: str = "http://127.0.0.1:8000/v1"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a version is judged by, as the card's model-index and the store's
    listings show them: `final` (validation metrics of the published weights) when
    training recorded it, else the top-level numbers; sorted by name."""
    final = metrics.get("final")
    chosen = final if isinstance(final, dict) and final else metrics
    return {k: float(v) for k, v in sorted(chosen.items()) if _is_number(v)}


def front_matter(card: CardData) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if card.license:
        meta["license"] = card.license
    if card.base_model:
        meta["base_model"] = card.base_model
    meta["library_name"] = "peft" if card.kind == "adapter" else "transformers"
    meta["pipeline_tag"] = PIPELINE_TAGS.get(card.task, "text-generation")
    tags = ["gptstore", *card.tags]
    meta["tags"] = list(dict.fromkeys(tags))
    dataset = card.lineage.get("dataset")
    if isinstance(dataset, dict) and dataset.get("digest"):
        meta["datasets"] = [dataset.get("name") or dataset["digest"]]
    headline = headline_metrics(card.metrics)
    if headline:
        meta["model-index"] = [
            {
                "name": card.name,
                "results": [
                    {
                        "task": {"type": meta["pipeline_tag"]},
                        "dataset": {
                            "name": (dataset or {}).get("name", "validation set")
                            if isinstance(dataset, dict)
                            else "validation set",
                            "type": "custom",
                        },
                        "metrics": [
                            {"type": k, "value": v, "name": k} for k, v in headline.items()
                        ],
                    }
                ],
            }
        ]
    return meta


def _table(rows: list[tuple[str, str]]) -> str:
    out = ["| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return "`" + yaml.safe_dump(value, default_flow_style=True, width=1000).strip() + "`"
    return str(value).replace("|", "\\|")


def render_card(card: CardData) -> str:
    meta = yaml.safe_dump(front_matter(card), sort_keys=False, allow_unicode=True)
    parts = [f"---\n{meta}---\n", f"# {card.name}\n"]
    if card.description:
        parts.append(card.description.strip() + "\n")
    kind = "LoRA adapter" if card.kind == "adapter" else "full model"
    facts = [("version", str(card.version)), ("task", card.task), ("kind", kind)]
    if card.base_model:
        facts.append(("base model", f"`{card.base_model}`"))
    if card.license:
        facts.append(("license", card.license))
    if card.label_names:
        facts.append(("labels", ", ".join(card.label_names)))
    parts.append(_table(facts) + "\n")
    if card.lineage:
        parts.append("## Lineage\n")
        parts.append(_table([(k, _fmt(v)) for k, v in card.lineage.items()]) + "\n")
    if card.metrics:
        parts.append("## Metrics\n")
        rows = []
        for key, value in card.metrics.items():
            if isinstance(value, dict) and all(_is_number(v) for v in value.values()):
                rows += [(f"{key} {k}", _fmt(v)) for k, v in value.items()]
            elif key != "curves":
                rows.append((key, _fmt(value)))
        parts.append(_table(rows) + "\n")
        curves = card.metrics.get("curves")
        if isinstance(curves, dict) and curves:
            parts.append("### Training curves\n")
            for curve, points in curves.items():
                values = [p[1] if isinstance(p, list | tuple) else p for p in points]
                if values:
                    parts.append(
                        f"- {curve}: {len(values)} points, first {_fmt(values[0])}, "
                        f"min {_fmt(min(values))}, last {_fmt(values[-1])}"
                    )
            parts.append("")
    parts.append("## Use\n")
    if card.task == "classification":
        parts.append(f"```\ngptstore classify {card.name} \"some text\"\n```\n")
    else:
        parts.append(
            "```python\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{card.api_base}", api_key="unused")\n'
            "reply = client.chat.completions.create(\n"
            f'    model="{card.name}", messages=[{{"role": "user", "content": "Hello!"}}]\n'
            ")\nprint(reply.choices[0].message.content)\n```\n"
        )
    return "\n".join(parts)


def parse_card(text: str) -> tuple[dict[str, Any], str]:
    """Split a card into (front matter, markdown body)."""
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            meta = yaml.safe_load(text[4:end]) or {}
            return meta, text[end + 5 :]
    return {}, text
