"""`gptstore files`, `gptstore jobs` and `gptstore finetune --submit` on the local store,
with a worker running the queued job in between."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.jobs.store import JobStore
from gptstore.jobs.worker import Worker
from gptstore.settings import Settings


def _app():
    from gptstore.cli.app import app

    return app


def test_submit_follow_and_inspect(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    settings = Settings()  # the test's GPTSTORE_HOME (tests/conftest.py)
    catalog = Catalog(settings)
    import_path(catalog, tiny_models["llama"], "acme/tiny")
    catalog.close()
    rows = [{"prompt": f"{i} plus one is", "completion": f" {i + 1}"} for i in range(30)]
    train = tmp_path / "count.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()

    # a namespace of the operator's choosing, as a run in the foreground may publish into
    result = runner.invoke(_app(), ["finetune", "--base", "acme/tiny", "--train", str(train),
                                    "--name", "me/counter", "--epochs", "2",
                                    "--lr", "0.01", "--submit", "--json"])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["job"]
    listed = json.loads(runner.invoke(_app(), ["jobs", "list", "--json"]).stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert listed[0]["status"] == "validating_files" and listed[0]["owner"] == "me"
    assert listed[0]["fine_tuned_model"] is None  # nothing published yet, as OpenAI's
    table = runner.invoke(_app(), ["jobs", "list"], terminal_width=60).stdout
    assert job_id in table and "me/counter" in table  # ids and names whole, even at 60

    worker = Worker(settings)
    worker.start()
    try:
        result = runner.invoke(_app(), ["jobs", "show", job_id, "--follow", "--json"])
    finally:
        worker.stop()
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["status"] == "succeeded" and shown["trained_tokens"] > 0
    assert shown["fine_tuned_model"] == "me/counter"
    assert shown["hyperparameters"]["n_epochs"] == 2
    # the service's per-epoch checkpoint models, as for a job from the API
    catalog = Catalog(settings)
    try:
        checkpoints, _ = JobStore(catalog.db).checkpoints(job_id)
        assert len(checkpoints) == 2
        assert all(catalog.exists(c.model) for c in checkpoints)
    finally:
        catalog.close()
    assert "The job has successfully completed" in result.stderr

    events = json.loads(runner.invoke(_app(), ["jobs", "events", job_id, "--limit", "500",
                                               "--json"]).stdout)
    assert events[0]["message"] == f"Created fine-tuning job: {job_id}"
    assert events[-1]["message"] == "The job has successfully completed"
    files = json.loads(runner.invoke(_app(), ["files", "list", "--json"]).stdout)
    assert sorted(f["purpose"] for f in files) == ["fine-tune", "fine-tune-results"]
    upload = next(f for f in files if f["purpose"] == "fine-tune")
    assert upload["filename"] == "count.jsonl" and upload["status"] == "processed"
    report = json.loads(runner.invoke(_app(), ["files", "show", upload["id"],
                                               "--json"]).stdout)["report"]
    assert (report["format"], report["examples"]) == ("prompt-completion", 30)

    generated = runner.invoke(_app(), ["generate", "me/counter", "7 plus one is",
                                       "--raw", "--max-tokens", "2", "--temperature", "0"])
    assert generated.exit_code == 0 and generated.stdout.strip(), generated.output

    # a finished job's file may go; a cancel of a finished job names the problem
    cancelled = runner.invoke(_app(), ["jobs", "cancel", job_id])
    assert cancelled.exit_code != 0 and "already succeeded" in str(cancelled.exception)
    removed = runner.invoke(_app(), ["files", "rm", upload["id"]])
    assert removed.exit_code == 0, removed.output


def test_a_refused_submit_leaves_no_uploaded_file(tiny_models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    catalog = Catalog(Settings())
    import_path(catalog, tiny_models["llama"], "acme/tiny")
    catalog.close()
    train = tmp_path / "count.jsonl"
    train.write_text(json.dumps({"prompt": "1 plus one is", "completion": " 2"}) + "\n")
    runner = CliRunner()
    # the name is taken: the service refuses the job after the upload
    result = runner.invoke(_app(), ["finetune", "--base", "acme/tiny", "--train", str(train),
                                    "--name", "acme/tiny", "--submit"])
    assert result.exit_code != 0 and "already exists" in str(result.exception)
    assert json.loads(runner.invoke(_app(), ["files", "list", "--json"]).stdout) == []
    assert json.loads(runner.invoke(_app(), ["jobs", "list", "--json"]).stdout) == []
