"""Fine-tuning as a service through the official `openai` package against a real
`gptstore serve` (its in-process worker runs the jobs): upload, create, poll, events,
checkpoints, the new model answering at once; a bad file, cancel, pause and resume;
request errors that leave no job behind; a classification job."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer
from gptstore.testing.tiny import make_tiny_model

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": f"What is {i} plus {i + 1}?"},
        {"role": "assistant", "content": f"Arr! {i} plus {i + 1} be {2 * i + 1}, matey."}]}
        for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in rows))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jobs-store")
    catalog = Catalog(Settings(home=root / "home"))
    import_path(catalog, make_tiny_model("llama", root / "base", seed=3), "acme/tiny")
    catalog.close()
    return root / "home"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RemoteServer]:
    env = {"GPTSTORE_INFERENCE_DTYPE": "float32", "GPTSTORE_JOB_LEASE_SECONDS": "10"}
    with RemoteServer(home, env=env) as srv:
        yield srv


@pytest.fixture
def client(server: RemoteServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as handle:
        return client.files.create(file=handle, purpose="fine-tune").id


def wait_for(client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 180
             ) -> openai.types.fine_tuning.FineTuningJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} stayed {job.status}; events: "
                         f"{[e.message for e in client.fine_tuning.jobs.list_events(job_id)]}")


def wait_for_step(client: openai.OpenAI, job_id: str, step: int, timeout: float = 120) -> int:
    """Block until the job has logged `step` optimiser steps; returns the last step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.fine_tuning.jobs.list_events(job_id, limit=5):
            if event.type == "metrics" and event.data.get("step", 0) >= step:
                return int(event.data["step"])
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach step {step}")


def test_chat_job_end_to_end(client: openai.OpenAI, server: RemoteServer, home: Path,
                             tmp_path: Path) -> None:
    train = upload(client, write_jsonl(tmp_path / "pirate.jsonl", chat_rows(40)))
    assert client.files.retrieve(train).filename == "pirate.jsonl"
    report = httpx.get(f"{server.url}/api/files/{train}/report").json()
    assert (report["ok"], report["format"], report["examples"]) == (True, "chat", 40)
    job = client.fine_tuning.jobs.create(
        model="acme/tiny", training_file=train, suffix="pirate", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 8}}},
        extra_body={"learning_rate": 0.01, "lora_r": 4})
    assert job.status == "validating_files" and job.fine_tuned_model is None
    assert job.hyperparameters.n_epochs == 3 and job.seed == 7
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    name = done.fine_tuned_model
    assert name.startswith("local/tiny-pirate-") and done.trained_tokens > 0
    # 36 training examples after the 10% split, batch 8 (auto would take 1 for a file
    # this small: tests/unit/training/test_training_config.py): 5 steps an epoch
    assert (done.hyperparameters.n_epochs, done.hyperparameters.batch_size) == (3, 8)
    assert done.hyperparameters.learning_rate_multiplier == pytest.approx(50.0)  # 0.01/2e-4
    assert done.finished_at >= done.created_at

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    messages = [e.message for e in reversed(events)]  # oldest first
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Files validated, moving job to queued state" in messages
    assert messages[-1] == "The job has successfully completed"
    steps = [e.data for e in reversed(events) if e.type == "metrics" and "train_loss" in e.data]
    assert [d["step"] for d in steps] == list(range(1, 16))
    assert all(0 <= d["train_mean_token_accuracy"] <= 1 for d in steps)
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more
    after = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert after.data[0].id != page.data[-1].id
    assert [e.id for e in after.data] == [e.id for e in events[3:6]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [15, 10, 5]  # last 3 epoch ends
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{name}-step-15"
    assert set(checkpoints[0].metrics.model_dump(exclude_none=True)) >= {
        "step", "train_loss", "train_mean_token_accuracy", "valid_loss",
        "valid_mean_token_accuracy"}

    results = client.files.content(done.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(results)))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss",
                             "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == list(range(1, 16))
    assert all(0 <= float(r["train_accuracy"]) <= 1 for r in rows)
    assert [r["valid_loss"] != "" for r in rows].count(True) >= 3  # the run validated

    # the new model and every checkpoint answer at once, with the model's own greedy text
    assert name in {m.id for m in client.models.list()}
    for model in (name, checkpoints[-1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8,
                                               temperature=0)
        assert reply.choices[0].message.content == greedy_reply(home, model, 8)


def greedy_reply(home: Path, model: str, max_tokens: int) -> str:
    """What transformers + PEFT generate greedily for QUESTION from the stored model."""
    from gptstore.inference.loader import load_version

    catalog = Catalog(Settings(home=home))
    try:
        loaded = load_version(catalog, model, dtype=torch.float32)
    finally:
        catalog.close()
    tokenizer = loaded.tokenizer
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=max_tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def test_a_bad_file_fails_at_validating_files(client: openai.OpenAI, tmp_path: Path) -> None:
    rows: list = chat_rows(12)
    rows[2] = '{"messages": [{"role": "user", "content": "unterminated"'
    train = upload(client, write_jsonl(tmp_path / "broken.jsonl", rows))
    stored = client.files.retrieve(train)
    assert stored.status == "error"
    assert stored.status_details and stored.status_details.startswith("line 3: ")
    job = client.fine_tuning.jobs.create(model="acme/tiny", training_file=train)
    failed = wait_for(client, job.id, {"failed", "succeeded"})
    assert failed.status == "failed"
    assert failed.error.param == "training_file" and failed.error.code == "invalid_training_file"
    assert "line 3" in failed.error.message
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert any(m.startswith("Validation of the training file failed") for m in messages)
    assert "Fine-tuning job started" not in messages


def test_request_errors_leave_no_job(client: openai.OpenAI, server: RemoteServer,
                                     tmp_path: Path) -> None:
    train = upload(client, write_jsonl(tmp_path / "ok.jsonl", chat_rows(12)))
    before = [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    cases = [
        ({"model": "acme/missing", "training_file": train}, "model"),
        ({"model": "acme/tiny", "training_file": "file-doesnotexist"}, "training_file"),
        ({"model": "acme/tiny", "training_file": train,
          "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"model": "acme/tiny", "training_file": train,
          "hyperparameters": {"learning_rate_multiplier": -1}},
         "hyperparameters.learning_rate_multiplier"),
        ({"model": "acme/tiny", "training_file": train, "lora_rank": 8}, "lora_rank"),
        ({"model": "acme/tiny", "training_file": train, "lora_r": 0}, "lora_r"),
        ({"model": "acme/tiny", "training_file": train, "run_dir": "/tmp/x"}, "run_dir"),
        ({"model": "acme/tiny", "training_file": train, "suffix": "no spaces!"}, "suffix"),
        ({"model": "acme/tiny", "training_file": train,
          "method": {"type": "dpo"}}, "method.type"),
    ]
    for body, param in cases:
        response = httpx.post(f"{server.url}/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert [j.id for j in client.fine_tuning.jobs.list(limit=100)] == before
    missing = httpx.get(f"{server.url}/v1/fine_tuning/jobs/ftjob-nope")
    assert missing.status_code == 404
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("data.jsonl", b"{}\n"), purpose="assistants")


def test_cancel_a_running_job(client: openai.OpenAI, tmp_path: Path) -> None:
    train = upload(client, write_jsonl(tmp_path / "long.jsonl", chat_rows(200)))
    job = client.fine_tuning.jobs.create(model="acme/tiny", training_file=train,
                                         hyperparameters={"n_epochs": 40})
    wait_for_step(client, job.id, 3)
    asked = time.monotonic()
    assert client.fine_tuning.jobs.cancel(job.id).status == "running"  # stopping
    cancelled = wait_for(client, job.id, {"cancelled", "succeeded", "failed"}, timeout=10)
    assert cancelled.status == "cancelled" and time.monotonic() - asked < 5
    assert cancelled.fine_tuned_model is None
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert events[0] == "Job cancelled" and any(m.startswith("Step 3/") for m in events)
    with pytest.raises(openai.ConflictError):
        client.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=object)


def test_pause_and_resume(client: openai.OpenAI, tmp_path: Path) -> None:
    train = upload(client, write_jsonl(tmp_path / "pause.jsonl", chat_rows(120)))
    # long enough (420 steps) that the pause, which reaches the job with the worker's
    # next heartbeat (at most a second later), finds it still running on a fast machine
    job = client.fine_tuning.jobs.create(model="acme/tiny", training_file=train,
                                         hyperparameters={"n_epochs": 30})
    wait_for_step(client, job.id, 2)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, {"paused", "succeeded", "failed"}, timeout=60)
    assert paused.status == "paused"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    stopped = next(m for m in events if m.startswith("Stopped at step"))
    step = int(stopped.split()[3])
    client.fine_tuning.jobs.resume(job.id)
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert f"Fine-tuning resumed at step {step}" in events
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)
             if e.type == "metrics" and "train_loss" in e.data]
    # every optimiser step ran exactly once across the pause (108 examples, batch 8: 14 x 30)
    assert sorted(steps) == list(range(1, 421))


def test_classification_job(client: openai.OpenAI, server: RemoteServer,
                            tmp_path: Path) -> None:
    words = {"positive": ["great", "good", "loved"], "negative": ["bad", "dull", "hated"]}
    rows = [{"text": f"the film was {words[label][i % 3]}", "label": label}
            for i in range(30) for label in ("positive", "negative")]
    train = upload(client, write_jsonl(tmp_path / "sentiment.jsonl", rows))
    job = client.fine_tuning.jobs.create(
        model="acme/tiny", training_file=train, hyperparameters={"n_epochs": 4},
        extra_body={"task": "classification", "learning_rate": 0.02})
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    # the first request builds the engine and loads the model: more than httpx's 5 s
    # default on a loaded machine
    reply = httpx.post(f"{server.url}/v1/classifications", json={
        "model": done.fine_tuned_model, "input": ["the film was great", "the film was bad"]},
        timeout=120)
    assert reply.status_code == 200, reply.text
    labels = [r["label"] for r in reply.json()["data"]]
    assert labels == ["positive", "negative"]
