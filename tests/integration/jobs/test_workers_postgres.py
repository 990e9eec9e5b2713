"""Many `gptstore worker` processes on one PostgreSQL database and one shared home:
every job runs exactly once, and a worker killed with SIGKILL mid-job has its job taken
over by another worker, resumed from its checkpoint, with the metrics of an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.jobs.service import create_job
from gptstore.jobs.states import JobStatus
from gptstore.jobs.store import JobStore
from gptstore.settings import Settings
from gptstore.testing.tiny import make_tiny_model

pytestmark = pytest.mark.postgres
LEASE = 4.0


@pytest.fixture
def shared(pg_database: str, tmp_path: Path, tiny_models: dict[str, Path]
           ) -> Iterator[tuple[Settings, Catalog]]:
    from tests.conftest import _reset_pg

    _reset_pg(pg_database)
    settings = Settings(home=tmp_path / "home", database_url=pg_database, offline=True)
    catalog = Catalog(settings)
    import_path(catalog, tiny_models["llama"], "acme/tiny")
    # a wider one whose steps take long enough to kill a worker mid-run
    wide = make_tiny_model("llama", tmp_path / "wide", hidden_size=256, intermediate_size=768,
                           num_hidden_layers=4)
    import_path(catalog, wide, "acme/wide")
    yield settings, catalog
    catalog.close()


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPTSTORE_HOME": str(settings.home),
           "GPTSTORE_DATABASE_URL": str(settings.database_url),
           "GPTSTORE_JOB_LEASE_SECONDS": str(LEASE)}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gptstore", "worker"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def upload(catalog: Catalog, n: int) -> str:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]}
            for i in range(n)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return catalog.files.upload([data], filename="sums.jsonl", purpose="fine-tune",
                                owner="local").id


def wait_all(store: JobStore, ids: list[str], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(j.status.finished for j in jobs):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"not finished: {[(j.id, j.status) for j in jobs]}")


def test_two_workers_run_ten_jobs_each_exactly_once(shared, tmp_path):
    settings, catalog = shared
    store = JobStore(catalog.db)
    file_id = upload(catalog, 24)
    ids = [create_job(catalog, store, owner="local", model="acme/tiny", training_file=file_id,
                      n_epochs=1, options={"max_steps": 2}).id for _ in range(10)]
    workers = [start_worker(settings, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        jobs = wait_all(store, ids, timeout=400)
    finally:
        for worker in workers:
            stop(worker)
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 10, [j.error for j in jobs]
    assert [j.attempts for j in jobs] == [1] * 10
    for job in jobs:
        started = [e for e in store.events_since(job.id)
                   if e.message == "Fine-tuning job started"]
        assert len(started) == 1
    assert len({j.fine_tuned_model for j in jobs}) == 10


def test_a_killed_worker_job_resumes_elsewhere_with_the_same_result(shared, tmp_path):
    settings, catalog = shared
    store = JobStore(catalog.db)
    file_id = upload(catalog, 160)
    options = {"learning_rate": 0.01, "save_every": 5, "eval_every": 20, "shards": 1,
               "checkpoint_models": 0}

    def job() -> str:
        return create_job(catalog, store, owner="local", model="acme/wide",
                          training_file=file_id, n_epochs=4, seed=5, options=options).id

    reference = job()
    first = start_worker(settings, tmp_path / "w1.log")
    try:
        wait_all(store, [reference], timeout=300)
        interrupted = job()
        # wait until the job has a checkpoint to resume from, then kill its worker outright
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            steps = [e.data["step"] for e in store.events_since(interrupted)
                     if e.type == "metrics" and e.data and "train_loss" in e.data]
            if steps and max(steps) >= 12:
                break
            time.sleep(0.1)
        assert store.get(interrupted).status == JobStatus.RUNNING
        log = (settings.runs_dir / "jobs" / f"{interrupted}.log").read_text()
        job_pid = int(log.split(", pid ", 1)[1].split(",", 1)[0])
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # the job process notices its worker is gone and exits at once: no orphan trains on
        deadline = time.monotonic() + 10
        while Path(f"/proc/{job_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{job_pid}").exists()
        second = start_worker(settings, tmp_path / "w2.log")
        try:
            done = wait_all(store, [interrupted], timeout=300)[0]
        finally:
            stop(second)
    finally:
        stop(first)
    ref = store.get(reference)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert (done.attempts, done.takeovers) == (2, 1)
    messages = [e.message for e in store.events_since(interrupted)]
    assert any("takes the job over" in m for m in messages)
    resumed = [m for m in messages if m.startswith("Fine-tuning resumed at step")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 5
    # the same seed and data: the resumed run ends exactly where the uninterrupted one did
    assert done.record["best"] == ref.record["best"]
    assert done.record["last"] == ref.record["last"]
    assert done.record["train_tokens"] == ref.record["train_tokens"]
