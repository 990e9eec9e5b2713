"""The jobs table as a queue, on SQLite and PostgreSQL: claims, leases, takeover, the
per-owner limit, cancel / pause / resume rules, and the service's checks that leave no
row behind."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from gptstore.jobs.service import create_job, validate_job
from gptstore.jobs.states import JobStatus
from gptstore.jobs.store import JobStore


def chat_file(catalog: Catalog, n: int = 12, *, broken_line: int | None = None) -> str:
    rows = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                     {"role": "assistant", "content": f"a{i}"}]})
            for i in range(n)]
    if broken_line is not None:
        rows[broken_line - 1] = '{"messages": ['
    data = ("\n".join(rows) + "\n").encode()
    return catalog.files.upload([data], filename="chat.jsonl", purpose="fine-tune",
                                owner="ann").id


@pytest.fixture
def queue(catalog: Catalog, tiny_models: dict[str, Path]) -> tuple[Catalog, JobStore, str]:
    import_path(catalog, tiny_models["llama"], "acme/tiny")
    return catalog, JobStore(catalog.db), chat_file(catalog)


def make_job(catalog: Catalog, store: JobStore, file_id: str, owner: str = "ann", **kw):
    return create_job(catalog, store, owner=owner, model="acme/tiny", training_file=file_id,
                      **kw)


def test_claims_are_exclusive_and_in_order(queue):
    catalog, store, file_id = queue
    jobs = [make_job(catalog, store, file_id) for _ in range(3)]
    for job in jobs:  # validated into the queue
        claimed = store.claim("v", lease_seconds=30, max_per_owner=None,
                              statuses=(JobStatus.VALIDATING_FILES,), takeover=False)
        assert claimed.id == job.id and claimed.status == JobStatus.VALIDATING_FILES
        assert validate_job(catalog, store, claimed, "v")
    assert [store.get(j.id).status for j in jobs] == [JobStatus.QUEUED] * 3
    first = store.claim("w1", lease_seconds=30, max_per_owner=5)
    second = store.claim("w2", lease_seconds=30, max_per_owner=5)
    assert (first.id, second.id) == (jobs[0].id, jobs[1].id)
    assert first.status == JobStatus.RUNNING and first.worker == "w1" and first.attempts == 1


def test_concurrent_claimers_never_share_a_job(queue):
    catalog, store, file_id = queue
    ids = set()
    for _ in range(8):
        job = make_job(catalog, store, file_id)
        ids.add(job.id)
        claimed = store.claim("v", lease_seconds=30, max_per_owner=None,
                              statuses=(JobStatus.VALIDATING_FILES,), takeover=False)
        validate_job(catalog, store, claimed, "v")
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := store.claim(name, lease_seconds=30, max_per_owner=None)) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # each job exactly once


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_locked_out(queue):
    catalog, store, file_id = queue
    job = make_job(catalog, store, file_id)
    store.release(job.id, None, JobStatus.QUEUED)  # validated by hand
    store.claim("v", lease_seconds=30, max_per_owner=None,
                statuses=(JobStatus.VALIDATING_FILES,), takeover=False)
    held = store.claim("w1", lease_seconds=0.5, max_per_owner=None)
    assert held is not None and store.claim("w2", lease_seconds=30, max_per_owner=None) is None
    assert store.heartbeat(job.id, "w1", lease_seconds=0.5) is not None
    time.sleep(0.7)
    taken = store.claim("w2", lease_seconds=30, max_per_owner=None)
    assert taken.id == job.id and taken.worker == "w2"
    assert (taken.attempts, taken.takeovers) == (2, 1)
    assert store.heartbeat(job.id, "w1", lease_seconds=30) is None  # lost
    assert not store.finish(job.id, "w1", JobStatus.SUCCEEDED)
    assert store.get(job.id).status == JobStatus.RUNNING
    events = [e.message for e in store.events(job.id)[0]]
    assert events[0].startswith("Worker w1 stopped renewing its lease; w2 takes the job over")


def test_the_per_owner_limit_keeps_the_rest_queued(queue):
    catalog, store, file_id = queue
    other = catalog.files.upload([b'{"text": "hello there"}\n' * 3], filename="t.jsonl",
                                 purpose="fine-tune", owner="bob").id
    for owner, fid in (("ann", file_id), ("ann", file_id), ("bob", other)):
        job = make_job(catalog, store, fid, owner=owner)
        store.claim("v", lease_seconds=30, max_per_owner=None,
                    statuses=(JobStatus.VALIDATING_FILES,), takeover=False)
        store.release(job.id, "v", JobStatus.QUEUED)
    first = store.claim("w", lease_seconds=30, max_per_owner=1)
    second = store.claim("w", lease_seconds=30, max_per_owner=1)
    assert (first.owner, second.owner) == ("ann", "bob")  # ann's second job waits
    assert store.claim("w", lease_seconds=30, max_per_owner=1) is None


def test_cancel_pause_resume_rules(queue):
    catalog, store, file_id = queue
    queued = make_job(catalog, store, file_id)
    assert store.request_cancel(queued.id).status == JobStatus.CANCELLED
    assert store.request_cancel(queued.id).status == JobStatus.CANCELLED  # idempotent
    with pytest.raises(Conflict):
        store.request_pause(queued.id)
    job = make_job(catalog, store, file_id)
    store.claim("v", lease_seconds=30, max_per_owner=None,
                statuses=(JobStatus.VALIDATING_FILES,), takeover=False)
    store.release(job.id, "v", JobStatus.QUEUED)
    assert store.request_pause(job.id).status == JobStatus.PAUSED
    assert store.claim("w", lease_seconds=30, max_per_owner=None) is None  # paused waits
    assert store.resume(job.id).status == JobStatus.QUEUED
    running = store.claim("w", lease_seconds=30, max_per_owner=None)
    assert running.id == job.id
    assert store.request_pause(job.id).pause_requested
    assert store.heartbeat(job.id, "w", lease_seconds=30).pause
    assert store.request_cancel(job.id).cancel_requested
    assert store.finish(job.id, "w", JobStatus.SUCCEEDED, fine_tuned_model="x")
    with pytest.raises(Conflict, match="already succeeded"):
        store.request_cancel(job.id)
    with pytest.raises(NotFound):
        store.get("ftjob-missing")


def test_service_checks_leave_no_job(queue):
    catalog, store, file_id = queue
    results = catalog.files.add(catalog.blobs.put_bytes(b"step\n").digest, 5,
                                filename="r.csv", purpose="fine-tune-results", owner="ann")
    cases = [
        ({"model": "acme/none"}, "model"),
        ({"training_file": "file-none"}, "training_file"),
        ({"training_file": results.id}, "training_file"),
        ({"n_epochs": 51}, "hyperparameters.n_epochs"),
        ({"batch_size": 0}, "hyperparameters.batch_size"),
        ({"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
        ({"seed": -1}, "seed"),
        ({"suffix": "a b"}, "suffix"),
        ({"options": {"run_dir": "/etc"}}, "run_dir"),
        ({"options": {"warmup": 0.1}}, "warmup"),
        ({"options": {"learning_rate": -1.0}}, "learning_rate"),
        ({"options": {"name": "bob/mine"}}, "name"),
        ({"options": {"eval_suite": "no-such-suite"}}, "eval_suite"),
    ]
    for overrides, param in cases:
        kw = {"model": "acme/tiny", "training_file": file_id, **overrides}
        with pytest.raises(InvalidRequest) as info:
            create_job(catalog, store, owner="ann", **kw)
        assert info.value.param == param, (overrides, info.value.message)
    with pytest.raises(InvalidRequest) as info:  # another owner's file is a missing one
        create_job(catalog, store, owner="bob", model="acme/tiny", training_file=file_id)
    assert info.value.param == "training_file" and "does not exist" in info.value.message
    assert store.page()[0] == []


def test_validation_names_the_bad_line_and_the_file(queue):
    catalog, store, _ = queue
    broken = chat_file(catalog, broken_line=4)
    job = make_job(catalog, store, broken)
    claimed = store.claim("v", lease_seconds=30, max_per_owner=None,
                          statuses=(JobStatus.VALIDATING_FILES,), takeover=False)
    assert not validate_job(catalog, store, claimed, "v")
    failed = store.get(job.id)
    assert failed.status == JobStatus.FAILED and failed.error["param"] == "training_file"
    assert "line 4" in failed.error["message"] and failed.finished_at is not None
    store.check_file_unused(broken)  # a finished job no longer holds its file
    make_job(catalog, store, broken)
    with pytest.raises(Conflict, match="has not finished"):
        store.check_file_unused(broken)


def test_uploads_are_capped_and_names_checked(catalog):
    with pytest.raises(PayloadTooLarge):
        catalog.files.upload([b"x" * 600, b"y" * 600], filename="big.jsonl",
                             purpose="fine-tune", owner="ann", max_bytes=1000)
    for name in ("../etc/passwd", "a/b.jsonl", ".hidden", "nul\x00.jsonl", ""):
        with pytest.raises(InvalidRequest) as info:
            catalog.files.upload([b"{}\n"], filename=name, purpose="fine-tune", owner="ann")
        assert info.value.param == "file"
    assert catalog.files.page()[0] == []
    assert list(catalog.blobs.iter_blobs()) == []  # nothing half-written stayed


def test_a_job_may_name_an_evaluation_suite(queue, tmp_path):
    from gptstore.evaluation.suites import add_suite

    catalog, store, file_id = queue
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "q?", "answers": ["a"]}\n')
    add_suite(catalog, "toy-qa", data)
    job = make_job(catalog, store, file_id, options={"eval_suite": "toy-qa"})
    assert job.config["eval_suite"] == "toy-qa"
