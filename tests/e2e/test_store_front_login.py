"""The store front on a store that needs keys (`GPTSTORE_AUTH=required`), in headless
Chromium: a visitor is asked to sign in, a user signs in with a password, sees their
private model and not another user's, creates an API key shown once and revokes it,
and signs out (which revokes the session's key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gptstore.accounts.store import AccountStore
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="no /usr/bin/chromium: install it with `apt-get install -y "
                              "chromium` (as .ci/run does) to run the browser tests"),
]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    root = tmp_path_factory.mktemp("login-store")
    catalog = Catalog(Settings(home=root / "home"))
    accounts = AccountStore(catalog.db)
    for user in ("alice", "bob"):
        accounts.add_user(user, password=f"{user}: {PASSWORD}")
    folder = root / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for owner in ("alice", "bob"):
        catalog.claim_namespace(owner, accounts.get(owner).id)
        catalog.publish(f"{owner}/diary", folder, description=f"{owner}'s private notes.",
                        visibility="private")
    catalog.close()
    with RemoteServer(root / "home", env={"GPTSTORE_AUTH": "required"}) as srv:
        yield srv


@pytest.fixture
def page(server: RemoteServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox"])
        context = browser.new_context(base_url=server.url)
        context.set_default_timeout(20_000)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
        assert errors == [], f"the page raised: {errors}"


def ready(page: Any) -> None:
    page.wait_for_selector("main[data-ready='1']")


def test_sign_in_see_own_private_model_manage_keys_and_sign_out(page: Any,
                                                                  server: RemoteServer) -> None:
    page.goto("/search")
    ready(page)
    assert "sign in" in page.locator("[role=alert]").inner_text().lower()
    page.click("#sign-in")
    page.wait_for_url("**/login?next=%2Fsearch")
    ready(page)
    page.fill("#username", "alice")
    page.fill("#password", "wrong")
    page.click("#login-form button[type=submit]")
    assert "wrong password" in page.locator("#login-form [role=alert]").inner_text()
    page.fill("#password", f"alice: {PASSWORD}")
    page.click("#login-form button[type=submit]")
    page.wait_for_url("**/search")
    ready(page)
    page.wait_for_selector("#account-name")
    assert page.locator("#account-name").inner_text() == "alice"
    page.wait_for_selector(".model-card")
    names = page.locator(".model-card .model-name").all_inner_texts()
    assert "alice/diary" in names and "bob/diary" not in names

    page.goto("/me/keys")
    ready(page)
    page.fill("#key-name", "notebook")
    page.select_option("#key-scope", "read")
    page.click("#key-form button[type=submit]")
    key = page.locator("#new-key").inner_text()
    assert key.startswith("gsk_")
    models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in models.json()["data"]] == ["alice/diary"]
    row = page.locator("#keys tr", has_text="notebook")
    row.locator("button", has_text="Revoke").click()
    page.wait_for_selector("#keys tr:has-text('notebook') .status.revoked")
    assert httpx.get(f"{server.url}/v1/models",
                     headers={"Authorization": f"Bearer {key}"}).status_code == 401

    session_key = page.evaluate("window.localStorage.getItem('gptstore.api_key')")
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert page.evaluate("window.localStorage.getItem('gptstore.api_key')") is None
    assert httpx.get(f"{server.url}/api/me",
                     headers={"Authorization": f"Bearer {session_key}"}).status_code == 401
