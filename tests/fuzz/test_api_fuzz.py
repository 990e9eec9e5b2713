"""Property-based fuzzing of the whole HTTP API with schemathesis: requests generated
from the app's own OpenAPI schema (valid and invalid values for every parameter and
body) are sent to the app in-process, as an authenticated user, over a store seeded with
public and private models. No answer may be a 5xx, and every answer must match the
schema the route documents.

Bounded so it fits `make test`: `MAX_EXAMPLES` cases per operation and no deadline (the
first inference request builds the engine).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from gptstore.accounts.store import AccountStore  # noqa: E402
from gptstore.api.app import build_app  # noqa: E402
from gptstore.settings import Settings  # noqa: E402

MAX_EXAMPLES = 12
ROOT = Path(tempfile.mkdtemp(prefix="gptstore-fuzz-"))
# keys required, no job worker, no rate limit (the fuzzer sends hundreds of requests)
APP = build_app(Settings(home=ROOT / "home", offline=True, auth="required", workers=0,
                         requests_per_minute=0))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
KEY: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _running_app() -> Iterator[None]:
    """The app's lifespan entered once for the module, and the store seeded."""
    with TestClient(APP):
        catalog = APP.state.catalog
        accounts = AccountStore(catalog.db)
        accounts.add_user("alice")
        accounts.add_user("bob")
        KEY["alice"] = accounts.create_key("alice", scope="admin")[1]
        for i, (name, visibility) in enumerate([("alice/open", "public"),
                                                ("alice/secret", "private"),
                                                ("bob/other", "private")]):
            folder = ROOT / f"src{i}"
            folder.mkdir(parents=True)
            (folder / "config.json").write_text("{}")
            catalog.publish(name, folder, visibility=visibility)
        yield
    shutil.rmtree(ROOT, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_answer_matches_the_schema(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY['alice']}"},
                           checks=[not_a_server_error, response_schema_conformance])
