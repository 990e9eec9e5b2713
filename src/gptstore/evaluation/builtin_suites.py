"""The built-in evaluation suites: one per task the store promises, on public data sets.

Each `BuiltinSuite` says how to turn the data set's own files (the layout of the
project's `../shared/data`, i.e. the upstream files unchanged) into the suite's JSON
Lines, with which prompt and metric it is scored, and its licence. Suites whose licence
allows redistribution ship a small subset inside the package (`suite_data/`), so they
work offline out of the box; the others (SST-2, TREC: no licence stated; AG News and
Multi30k: non-commercial) are built from a folder the user points at
(`gptstore suites builtin NAME --source DIR`).

| suite | task | data | metric |
| --- | --- | --- | --- |
| sst2 | classification | SST-2 dev (872 sentences) | accuracy |
| trec | classification | TREC: the last 500 training questions, held out | accuracy |
| agnews | classification | AG News test, first 1000 articles | accuracy |
| squad | qa (extractive) | SQuAD v1.1 dev subset (packaged: 100 questions) | f1 |
| nq-open | qa (closed-book) | NQ-open dev (packaged: 200 questions) | exact_match |
| multi30k-en-de | translation | Multi30k val, English to German (1014) | bleu |
| mbpp | code | MBPP test problems 11-510 (packaged: 11-60) | pass@1 |
| tinyshakespeare | causal-lm | tiny Shakespeare, last 10,000 characters | bits_per_byte (lower) |
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptstore.errors import InvalidRequest, NotFound

PACKAGED = Path(__file__).parent / "suite_data"
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class BuiltinSuite:
    name: str
    task: str
    description: str
    metric: str
    license: str
    source: str  # upstream repository @ commit: path
    folder: str  # sub-folder of the data root (../shared/data layout)
    convert: Callable[[Path], Rows | str]  # rows (JSONL) or text (causal-lm)
    prompt: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True
    packaged: str | None = None  # file in suite_data/ (redistributable subsets only)
    packaged_size: int | None = None  # rows (or characters) kept in the package

    @property
    def file_name(self) -> str:
        return f"{self.name}.{'txt' if self.task == 'causal-lm' else 'jsonl'}"


# ------------------------------------------------------------------ converters

SST2_LABELS = {"0": "negative", "1": "positive"}
# harvardnlp/sent-conv-torch numbers TREC's coarse classes in this order
TREC_LABELS = {"0": "description", "1": "entity", "2": "abbreviation", "3": "human",
               "4": "location", "5": "number"}
AGNEWS_LABELS = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}


def label_lines(path: Path, labels: dict[str, str]) -> Rows:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                  .splitlines(), start=1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if label not in labels or not text.strip():
            raise InvalidRequest(f"{path.name} line {number}: expected 'LABEL sentence' with "
                                 f"a label in {sorted(labels)}", param="source")
        rows.append({"text": text.strip(), "label": labels[label]})
    return rows


def _sst2(folder: Path) -> Rows:
    return label_lines(folder / "stsa.binary.dev", SST2_LABELS)


def _trec(folder: Path) -> Rows:
    return label_lines(folder / "TREC.train.all", TREC_LABELS)[-500:]


def agnews_articles(folder: Path, start: int = 0, stop: int | None = None) -> Rows:
    """AG News test articles [start, stop) as {"text": "Title. Body", "label"}."""
    rows = []
    with open(folder / "ag_news.test.csv", encoding="utf-8", newline="") as f:
        for record in itertools.islice(csv.reader(f), start, stop):
            label, title, body = record[0], record[1], record[2]
            rows.append({"text": f"{title.strip()}. {body.strip()}".replace("\\", " "),
                         "label": AGNEWS_LABELS[label]})
    return rows


def _agnews(folder: Path) -> Rows:
    return agnews_articles(folder, 0, 1000)


def squad_questions(folder: Path) -> Rows:
    doc = json.loads((folder / "expmrc-squad-dev.json").read_text(encoding="utf-8"))
    rows = []
    for article in doc["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                rows.append({"id": qa["id"], "question": qa["question"],
                             "context": paragraph["context"], "answers": answers})
    return rows


def nq_open_questions(folder: Path) -> Rows:
    with open(folder / "NQ-open.dev.jsonl", encoding="utf-8") as f:
        return [{"question": r["question"], "answers": r["answer"]}
                for r in map(json.loads, f) if r]


def multi30k_pairs(folder: Path, split: str) -> Rows:
    """Multi30k English-German pairs of a split (`train`, `val`) as {"source", "target"}."""
    def lines(name: str) -> list[str]:
        with gzip.open(folder / name, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]

    english, german = lines(f"multi30k.{split}.en.gz"), lines(f"multi30k.{split}.de.gz")
    return [{"source": en, "target": de} for en, de in zip(english, german, strict=True)
            if en.strip() and de.strip()]


def _multi30k(folder: Path) -> Rows:
    return multi30k_pairs(folder, "val")


def mbpp_problems(folder: Path, first: int, last: int) -> Rows:
    """MBPP records with task ids in [first, last] (the paper's splits: 1-10 prompt
    examples, 11-510 test, 511-600 validation, 601-974 train)."""
    with open(folder / "mbpp.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if first <= int(r["task_id"]) <= last]


def _mbpp(folder: Path) -> Rows:
    return mbpp_problems(folder, 11, 510)  # the test split


def _tinyshakespeare(folder: Path) -> str:
    text = (folder / "input.txt").read_text(encoding="utf-8")
    return text[-10_000:]


BUILTIN_SUITES: dict[str, BuiltinSuite] = {s.name: s for s in (
    BuiltinSuite("sst2", "classification", "SST-2 sentence sentiment, dev split",
                 "accuracy", "none stated for the data (Socher et al. 2013)",
                 "harvardnlp/sent-conv-torch @ d61ded0: data/stsa.binary.dev", "sst2", _sst2,
                 prompt={"template": "Review: {text}\nSentiment:"}),
    BuiltinSuite("trec", "classification", "TREC question type (6 classes), the last 500 "
                 "training questions held out", "accuracy", "none stated (Li & Roth 2002)",
                 "harvardnlp/sent-conv-torch @ d61ded0: data/TREC.train.all", "trec", _trec,
                 prompt={"template": "Question: {text}\nType:"}),
    BuiltinSuite("agnews", "classification", "AG News topic (4 classes), first 1000 test "
                 "articles", "accuracy", "non-commercial research use",
                 "mhjabreel/CharCnn_Keras @ 555590d: data/ag_news_csv/test.csv", "agnews",
                 _agnews, prompt={"template": "Article: {text}\nTopic:"}),
    BuiltinSuite("squad", "qa", "SQuAD v1.1 extractive QA (ExpMRC dev subset)", "f1",
                 "CC BY-SA 4.0", "ymcui/expmrc @ 9827fed: data/squad/expmrc-squad-dev.json",
                 "squad", squad_questions, prompt={"max_tokens": 24}, packaged="squad.jsonl",
                 packaged_size=100),
    BuiltinSuite("nq-open", "qa", "NQ-open closed-book QA, dev", "exact_match",
                 "CC BY-SA 3.0", "google-research-datasets/natural-questions @ fb26a30: "
                 "nq_open/NQ-open.dev.jsonl", "nq-open", nq_open_questions,
                 prompt={"max_tokens": 24},
                 packaged="nq-open.jsonl", packaged_size=200),
    BuiltinSuite("multi30k-en-de", "translation", "Multi30k image captions, English to "
                 "German, val", "bleu", "non-commercial research and educational use",
                 "multi30k/dataset @ a3d2e0d: data/task1/raw/val.{en,de}.gz", "multi30k",
                 _multi30k, prompt={"max_tokens": 64}),
    BuiltinSuite("mbpp", "code", "MBPP Python problems, test split (task ids 11-510)",
                 "pass@1", "Apache-2.0", "muitiiifruckt/ASE @ dc086bf: mbpp.jsonl", "mbpp",
                 _mbpp, prompt={"max_tokens": 256}, packaged="mbpp.jsonl", packaged_size=50),
    BuiltinSuite("tinyshakespeare", "causal-lm", "tiny Shakespeare, the last 10,000 "
                 "characters", "bits_per_byte", "public domain text (repo MIT)",
                 "karpathy/char-rnn @ 6f9487a: data/tinyshakespeare/input.txt",
                 "tinyshakespeare", _tinyshakespeare, higher_is_better=False,
                 packaged="tinyshakespeare.txt", packaged_size=10_000),
)}


def builtin_suite(name: str) -> BuiltinSuite:
    try:
        return BUILTIN_SUITES[name]
    except KeyError:
        raise NotFound(f"no built-in suite {name!r}; built-in: "
                       f"{', '.join(BUILTIN_SUITES)}", param="suite") from None


def build_suite_file(spec: BuiltinSuite, out: Path, source: Path | None) -> tuple[Path, int]:
    """Write the suite's data file into folder `out`: from the data set's folder under
    `source` (the whole split), else the packaged subset. Returns (path, examples)."""
    target = out / spec.file_name
    if source is None:
        if spec.packaged is None:
            raise InvalidRequest(
                f"suite {spec.name} ships no data ({spec.license}); build it from your copy "
                f"of the data set: --source DIR, where DIR/{spec.folder} holds the upstream "
                f"files ({spec.source})", param="source")
        packaged = PACKAGED / spec.packaged
        target.write_bytes(packaged.read_bytes())
        return target, _count(target, spec)
    folder = Path(source) / spec.folder
    if not folder.is_dir():
        raise NotFound(f"{folder} not found: --source must hold a folder {spec.folder}/ with "
                       f"the files of {spec.source}", param="source")
    data = spec.convert(folder)
    if isinstance(data, str):
        target.write_text(data, encoding="utf-8")
    else:
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data),
                          encoding="utf-8")
    return target, _count(target, spec)


def write_packaged_subsets(source: Path) -> None:
    """Rebuild `suite_data/` from the data sets (run by hand when a subset changes)."""
    PACKAGED.mkdir(exist_ok=True)
    for spec in BUILTIN_SUITES.values():
        if spec.packaged is None or spec.packaged_size is None:
            continue
        data = spec.convert(Path(source) / spec.folder)
        path = PACKAGED / spec.packaged
        if isinstance(data, str):
            path.write_text(data[-spec.packaged_size:], encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                    for r in data[:spec.packaged_size]), encoding="utf-8")


def _count(path: Path, spec: BuiltinSuite) -> int:
    text = path.read_text(encoding="utf-8")
    if spec.task == "causal-lm":
        return 1
    return sum(1 for line in text.splitlines() if line.strip())
