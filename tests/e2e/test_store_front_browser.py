"""The store front in headless Chromium (Debian's `chromium`, driven by Playwright) against
a real `gptstore serve` over a store of tiny random models: search and filter, a model
page (a hostile card stays inert), streamed chat stopped mid-answer, classification
bars, comparing two models, a bad upload's line-numbered errors, a fine-tune run through
the wizard with its chart moving to the new model's page, like and rate, a suite's
leaderboard (base first, each fine-tune against its base), an empty store,
and signing in to a store with users whose private models stay hidden. The main server
runs in local mode, whose one user sees every model (who sees what is tested in depth on
the API: tests/unit/api). Each page is saved as a screenshot at laptop and phone widths
in a folder the run prints, and no page may be wider than either.

Skipped only when /usr/bin/chromium is missing (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.evaluation.suites import add_suite, evaluate_on_suite
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer
from gptstore.testing.tiny import make_tiny_classifier, make_tiny_model

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="no /usr/bin/chromium: install it with `apt-get install -y "
                              "chromium` (as .ci/run does) to run the browser tests"),
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
HOSTILE = ("<script>window.__pwned = 1</script>\n\n<img src=x onerror=\"window.__pwned=2\">"
           "\n\n**Bold claim** and [a link](https://example.com).")


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [{"messages": [
        {"role": "user", "content": f"What is {i} plus {i + 1}?"},
        {"role": "assistant", "content": f"Arr, {2 * i + 1}."}]} for i in range(n)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("front-store")
    catalog = Catalog(Settings(home=root / "home"))
    # a long context, so a streamed answer runs long enough to be stopped
    base = make_tiny_model("llama", root / "base", seed=3, max_position_embeddings=4096)
    tiny = import_path(catalog, base, "acme/tiny")
    clf = make_tiny_classifier(base, root / "clf", ["negative", "positive"])
    catalog.publish("acme/sentiment", clf, task="classification", base=tiny.ref,
                    description="Tells positive reviews from negative ones.",
                    tags=["sentiment"], lineage={"label_names": ["negative", "positive"]})
    card_only = root / "card-only"
    card_only.mkdir()
    (card_only / "config.json").write_text("{}")
    catalog.publish("zeta/hostile", card_only, description=HOSTILE, tags=["demo"])
    # a suite with the base asked zero-shot and the classifier scored: a leaderboard
    toy = root / "toy-sentiment.jsonl"
    toy.write_text("".join(json.dumps({"text": f"the film was {word}", "label": label}) + "\n"
                           for word, label in (("great", "positive"), ("awful", "negative"),
                                               ("lovely", "positive"), ("dull", "negative"),
                                               ("superb", "positive"), ("bad", "negative"))))
    add_suite(catalog, "toy-sentiment", toy, description="Six film reviews.",
              license="CC0-1.0")
    for ref in ("acme/tiny", "acme/sentiment"):
        evaluate_on_suite(catalog, ref, "toy-sentiment")
    catalog.close()
    return root / "home"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RemoteServer]:
    env = {"GPTSTORE_INFERENCE_DTYPE": "float32", "GPTSTORE_OFFLINE": "1"}
    with RemoteServer(home, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("GPTSTORE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"store front screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: RemoteServer) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url, viewport=LAPTOP)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"),
                                     dialog.dismiss()))
    yield tab
    context.close()
    assert errors == [], f"the page raised: {errors}"


def ready(page: Any) -> None:
    page.wait_for_selector("main[data-ready='1']")


def shoot(page: Any, shots: Path, name: str) -> None:
    """Save the page at laptop and phone widths (full height); at either, nothing may
    stick out sideways (long code scrolls inside its own box)."""
    for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(shots / f"{name}-{label}.png"), full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate("""(limit) => [...document.querySelectorAll('body *')]
            .filter((el) => el.getBoundingClientRect().right > limit + 0.5)
            .slice(0, 5).map((el) => `${el.tagName}.${el.className}#${el.id}`)""",
                             size["width"])
        assert width <= size["width"], f"{name} is {width}px wide at {label} width: {wide}"
    page.set_viewport_size(LAPTOP)


def result_names(page: Any) -> list[str]:
    return page.locator(".model-card .model-name").all_inner_texts()


def test_home_search_and_filter(page: Any, shots: Path) -> None:
    page.goto("/")
    ready(page)
    assert page.locator("#shelf-chat").is_visible()
    assert "acme/tiny" in page.locator("section.shelf").first.inner_text()
    shoot(page, shots, "home")
    page.fill("#home-q", "positive reviews")
    page.press("#home-q", "Enter")
    page.wait_for_url("**/search?q=positive+reviews")
    ready(page)
    assert result_names(page) == ["acme/sentiment"]
    page.fill("#q", "")
    page.select_option("#task", "causal-lm")
    page.click("form.search-form button[type=submit]")
    page.wait_for_url("**/search?task=causal-lm**")
    ready(page)
    names = result_names(page)
    assert "acme/tiny" in names and "acme/sentiment" not in names
    page.fill("#q", "no such words at all")
    page.click("form.search-form button[type=submit]")
    page.wait_for_selector("text=No model matches")
    shoot(page, shots, "search")


def test_model_page_with_a_hostile_card(page: Any, shots: Path) -> None:
    page.goto("/models/zeta/hostile")
    ready(page)
    card = page.locator("#card .card-body")
    assert card.locator("strong", has_text="Bold claim").count() == 1
    assert card.locator("script").count() == 0
    assert card.locator("[onerror]").count() == 0
    assert page.evaluate("window.__pwned") is None  # nothing from the card ran
    assert "No training curves" in page.locator("#curves").inner_text()
    assert "No metrics" in page.locator("#metrics").inner_text()
    shoot(page, shots, "model-hostile")
    page.goto("/models/zeta/nope")
    ready(page)
    assert "not in the store" in page.locator("[role=alert]").inner_text()
    page.goto("/models/acme/tiny@7")
    ready(page)
    assert "no version 7" in page.locator("[role=alert]").inner_text()


def test_tree_files_and_snippets(page: Any, shots: Path) -> None:
    page.goto("/models/acme/tiny")
    ready(page)
    assert page.locator("#tree .model-name").all_inner_texts() == ["acme/sentiment"]
    files = page.locator("#versions table.files").inner_text()
    assert "model.safetensors" in files and "KB" in files
    snippets = page.locator("#use").inner_text()
    assert 'model="acme/tiny"' in snippets and "gptstore generate acme/tiny" in snippets
    assert "from_pretrained" in snippets
    shoot(page, shots, "model-base")


def test_chat_streams_and_stops(page: Any) -> None:
    page.goto("/models/acme/tiny")
    ready(page)
    page.fill("#pg-temperature", "0")
    page.fill("#pg-max-tokens", "3500")
    page.fill("#pg-input", "Tell me a long story.")
    page.click("#playground button[type=submit]")
    answer = page.locator(".msg.assistant .answer").last
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .answer').textContent.length > 20")
    page.click("#playground button:text('Stop')")
    page.wait_for_selector(".msg.assistant .answer[data-finish]")
    assert answer.get_attribute("data-finish") == "stopped"
    assert "[stopped]" in answer.inner_text()
    # a second message works after a stop: the conversation goes on
    page.fill("#pg-max-tokens", "5")
    page.fill("#pg-input", "Again.")
    page.click("#playground button[type=submit]")
    second = page.locator(".msg.assistant .answer").nth(1)
    page.wait_for_function(
        "() => document.querySelectorAll('.msg.assistant .answer[data-finish]').length == 2")
    assert second.get_attribute("data-finish") == "length"
    # more new tokens than the 4096-token context leaves: the server's reason, in the chat
    page.fill("#pg-max-tokens", "4096")
    page.fill("#pg-input", "And once more.")
    page.click("#playground button[type=submit]")
    page.wait_for_function(
        "() => document.querySelectorAll('.msg.assistant .answer[data-finish]').length == 3")
    third = page.locator(".msg.assistant .answer").nth(2)
    assert third.get_attribute("data-finish") == "error"
    assert "the model's context is 4096 tokens" in third.inner_text()


def test_compare_two_models_side_by_side(page: Any, shots: Path) -> None:
    page.goto("/compare?a=acme/tiny&b=acme/tiny@1")
    ready(page)
    page.fill("#cmp-prompt", "Hello")
    page.fill("#cmp-temperature", "0")
    page.fill("#cmp-max-tokens", "6")
    page.click("button:text('Run both')")
    page.wait_for_function("() => document.querySelectorAll('.answer[data-finish]').length == 2")
    outputs = [page.locator(f"#cmp-out-{side}") for side in "ab"]
    assert [o.get_attribute("data-finish") for o in outputs] == ["length", "length"]
    # the same weights, greedy: the same answer on both sides
    assert outputs[0].inner_text() == outputs[1].inner_text() != ""
    shoot(page, shots, "compare")


def test_leaderboard_ranks_the_base_first_and_links_the_lineage(page: Any, shots: Path
                                                                ) -> None:
    page.goto("/")
    ready(page)
    page.click("header nav a:text('Leaderboards')")
    page.wait_for_url("**/leaderboards")
    ready(page)
    suites = page.locator("#suites tbody tr")
    assert suites.count() == 1 and "Six film reviews. (6 examples)" in suites.inner_text()
    shoot(page, shots, "leaderboards")
    page.click("#suites a:text('toy-sentiment')")
    page.wait_for_url("**/leaderboards/toy-sentiment")
    ready(page)
    rows = page.locator("#leaderboard tbody tr")
    assert [rows.nth(i).get_attribute("data-ref") for i in range(rows.count())] == \
        ["acme/tiny@1", "acme/sentiment@1"]
    base, tuned = (rows.nth(i).locator("td") for i in range(2))
    assert base.nth(0).inner_text() == "1" and "base" in base.nth(1).inner_text()
    assert base.nth(4).inner_text() == "–"  # the base has no base to compare with
    # the fine-tune's row names its base and its difference from the base's score
    assert tuned.nth(2).inner_text() == "acme/tiny@1"
    shown = [rows.nth(i).locator("td.score").inner_text() for i in range(2)]
    scores = [float(text) for text in shown]
    delta = tuned.nth(4).inner_text()
    assert float(delta) == pytest.approx(scores[1] - scores[0], abs=1e-4)
    assert "the film was" not in page.locator("main").inner_text()  # no data leaks
    shoot(page, shots, "leaderboard")
    tuned.nth(1).locator("a").click()
    page.wait_for_url("**/models/acme/sentiment@1")
    ready(page)
    # the model page lists its results, linked back to the leaderboard
    result = page.locator("#evaluations tr")
    assert result.count() == 1
    assert f"accuracy {shown[1]}" in result.inner_text()
    result.locator("a").click()
    page.wait_for_url("**/leaderboards/toy-sentiment")
    ready(page)
    page.goto("/leaderboards/no-such-suite")
    ready(page)
    assert "no-such-suite" in page.locator(".error").inner_text()


def test_classify_shows_label_probabilities(page: Any, shots: Path) -> None:
    page.goto("/models/acme/sentiment")
    ready(page)
    page.fill("#pg-text", "What a wonderful film.")
    page.click("#playground button[type=submit]")
    page.wait_for_selector(".classify-out .bar-row")
    labels = page.locator(".classify-out .bar-name").all_inner_texts()
    assert sorted(labels) == ["negative", "positive"]
    shares = [float(t.rstrip("%")) for t in
              page.locator(".classify-out .bar-value").all_inner_texts()]
    assert sum(shares) == pytest.approx(100, abs=0.2)
    assert page.locator(".classify-out .label strong").inner_text() == labels[0]
    shoot(page, shots, "classify")


def test_like_and_rate(page: Any) -> None:
    page.goto("/models/acme/sentiment")
    ready(page)
    page.click("button.like")
    page.wait_for_selector("button.like.on")
    assert "Liked · 1" in page.locator("button.like").inner_text()
    page.click(".stars button[aria-label='4 stars']")
    page.wait_for_selector("text=4.0 out of 5 from 1 rating")
    page.reload()
    ready(page)
    assert "Liked · 1" in page.locator("button.like").inner_text()
    assert page.locator(".stars button[aria-checked=true]").get_attribute(
        "aria-label") == "4 stars"
    bars = page.locator("#rate .bar-value").all_inner_texts()
    assert bars == ["0", "1", "0", "0", "0"]  # 5..1 stars


def test_usage_is_counted(page: Any, server: RemoteServer) -> None:
    """The requests of the tests above (three chat turns, the last refused for its
    length, and the comparison's two sides on acme/tiny, one classification) reach the
    totals at the next flush (every 5 s) and make the models trend."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        tiny = httpx.get(f"{server.url}/api/models/acme/tiny").json()
        clf = httpx.get(f"{server.url}/api/models/acme/sentiment").json()
        if tiny["requests"] >= 5 and clf["requests"] >= 1:
            break
        time.sleep(0.5)
    assert (tiny["requests"], clf["requests"]) == (5, 1)
    page.goto("/search?sort=trending")
    ready(page)
    assert result_names(page)[:2] == ["acme/tiny", "acme/sentiment"]


def test_a_bad_file_shows_its_lines(page: Any, tmp_path: Path, shots: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows(1)[0]) + "\n{not json\n"
                   + json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
                   + "\n")
    page.goto("/finetune")
    ready(page)
    page.set_input_files("#ft-file", str(bad))
    page.click("button:text('Upload and check')")
    page.wait_for_selector("#report .errors li")
    errors = page.locator("#report .errors li").all_inner_texts()
    assert any(e.startswith("line 2:") for e in errors), errors
    assert any(e.startswith("line 3:") for e in errors), errors
    assert "cannot be trained on" in page.locator("#report [role=alert]").inner_text()
    shoot(page, shots, "wizard-bad-file")


def test_fine_tune_through_the_wizard(page: Any, server: RemoteServer, tmp_path: Path,
                                     shots: Path) -> None:
    good = tmp_path / "pirate.jsonl"
    # 240 rows x 5 epochs at batch 4: 300 steps, so the job page polls (every second)
    # while the tiny model still trains, even on a fast quiet machine
    good.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(240)))
    page.goto("/finetune?base=acme/tiny")
    ready(page)
    page.set_input_files("#ft-file", str(good))
    page.click("button:text('Upload and check')")
    page.wait_for_selector("text=240 examples read as chat")
    page.click("button:text('Next: preview')")
    # encoded with acme/tiny's tokenizer and chat template; the answer carries the loss
    page.wait_for_selector(".examples mark.loss-token")
    assert "Arr, 1." in page.locator(".examples mark.loss-token").first.inner_text()
    assert "What is 0 plus 1?" in page.locator(".examples pre").first.inner_text()
    assert "What is 0 plus 1?" not in page.locator(".examples mark").first.inner_text()
    facts = page.locator("#preview-facts").inner_text()
    assert "tokens" in facts and "an epoch" in facts
    assert "no lora fine-tune of acme/tiny has finished in this store yet" in facts
    shoot(page, shots, "wizard-preview")
    page.click("button:text('Next: settings')")
    assert page.locator("#ft-base").input_value() == "acme/tiny"
    assert page.locator("#ft-n_epochs").input_value() == "auto"
    shoot(page, shots, "wizard-settings")
    # what is not a number is refused in the form, not sent as "auto"
    page.fill("#ft-n_epochs", "abc")
    page.click("#ft-start")
    assert "auto or a whole number" in page.evaluate(
        "document.querySelector('#ft-n_epochs').validationMessage")
    assert "/finetune" in page.url
    # the suffix's pattern is one the browser checks (an invalid one it ignores)
    page.fill("#ft-suffix", "bad name")
    assert page.evaluate("document.querySelector('#ft-suffix').validity.patternMismatch")
    page.fill("#ft-n_epochs", "5")
    page.fill("#ft-batch_size", "4")
    page.fill("#ft-suffix", "pirate")
    page.click("#ft-start")
    page.wait_for_url("**/jobs/ftjob-*")
    # every length the loss curve had, as the page redraws it while the job trains
    page.evaluate("""() => {
        window.__curveLengths = new Set();
        new MutationObserver(() => {
            const line = document.querySelector('#job-charts path.line');
            if (line) window.__curveLengths.add(Number(line.dataset.points));
        }).observe(document.querySelector('main'), {childList: true, subtree: true});
    }""")
    try:
        page.wait_for_selector("#job-status.succeeded", timeout=180_000)
    except Exception:
        raise AssertionError(page.locator("main").inner_text()) from None
    lengths = sorted(page.evaluate("[...window.__curveLengths]"))
    assert len(lengths) >= 2, f"the chart did not move: {lengths}"  # drawn while training
    points = int(page.locator("#job-charts path.line").first.get_attribute("data-points"))
    job_id = page.url.rsplit("/", 1)[-1]
    events = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/events",
                       params={"limit": 1000}).json()["data"]
    steps = {e["data"]["step"] for e in events
             if e["type"] == "metrics" and "train_loss" in (e["data"] or {})}
    assert points == len(steps) == max(steps)  # one point per optimiser step
    assert "null" not in page.locator("main").inner_text()
    shoot(page, shots, "job")
    page.click("#job-model")
    ready(page)
    assert page.locator(".model-head h1").inner_text().startswith("local / tiny-pirate")
    assert page.locator("#curves svg path.line").count() >= 1  # the run's curves
    assert "acme/tiny@1" in page.locator("#lineage").inner_text()
    shoot(page, shots, "model-finetuned")
    # its owner edits the listing
    page.click("#edit summary")
    page.fill("#edit-description", "Answers sums like a pirate.")
    page.fill("#edit-tags", "pirate, math")
    page.click("#edit-form button[type=submit]")
    page.wait_for_selector(".model-head a.tag:text('#math')")
    assert page.locator(".model-head .model-desc").inner_text() == "Answers sums like a pirate."
    page.goto("/me/jobs")
    ready(page)
    assert "succeeded" in page.locator("table.list").inner_text()


# -- a store with accounts: keys required, private models -----------------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RemoteServer, dict]]:
    """A store with users alice and bob (so keys are required), each with a private
    model, and a public one."""
    from gptstore.accounts.store import AccountStore

    root = tmp_path_factory.mktemp("keyed-store")
    catalog = Catalog(Settings(home=root / "home"))
    accounts = AccountStore(catalog.db)
    folder = root / "card-only"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    keys = {}
    for user in ("alice", "bob"):
        account = accounts.add_user(user)
        keys[user] = accounts.create_key(user, scope="write", name="browser")[1]
        catalog.publish(f"{user}/secret", folder, description=f"{user}'s own.",
                        visibility="private", owner_id=account.id)
    catalog.publish("acme/open", folder, description="Everyone's.")
    catalog.close()
    with RemoteServer(root / "home", env={"GPTSTORE_OFFLINE": "1"}) as srv:
        yield srv, keys


def test_private_models_and_sign_in(browser: Any, keyed: tuple[RemoteServer, dict],
                                    shots: Path) -> None:
    server, keys = keyed
    context = browser.new_context(base_url=server.url, viewport=LAPTOP)
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        page.goto("/")
        ready(page)
        assert "sign in" in page.locator("[role=alert]").inner_text().lower()
        page.click("#sign-in")
        page.wait_for_url("**/login?next=%2F")
        ready(page)
        page.fill("#api-key", "gsk-not-a-real-key")
        page.click("#key-login-form button[type=submit]")
        page.wait_for_selector("#key-login-form [role=alert]")
        shoot(page, shots, "login-refused")
        page.fill("#api-key", keys["alice"])
        page.click("#key-login-form button[type=submit]")
        page.wait_for_url(server.url + "/")
        ready(page)
        assert page.locator("#account-name").inner_text() == "alice"
        page.goto("/search?sort=name")
        ready(page)
        assert result_names(page) == ["acme/open", "alice/secret"]  # not bob's
        page.goto("/models/bob/secret")
        ready(page)
        assert "not in the store" in page.locator("[role=alert]").inner_text()
        page.goto("/models/alice/secret")
        ready(page)
        assert page.locator(".model-head .pill.warn").inner_text() == "private"
        assert page.locator("#edit-visibility").input_value() == "private"
        page.goto("/models/acme/open")
        ready(page)
        assert page.locator("#edit").count() == 0  # not alice's namespace
        page.goto("/me/models")
        ready(page)
        assert result_names(page) == ["alice/secret"]
        shoot(page, shots, "my-models-keyed")
        page.click("#sign-out")
        page.wait_for_selector("#sign-in")
        page.goto("/search")
        ready(page)
        assert "sign in" in page.locator("[role=alert]").inner_text().lower()
    finally:
        context.close()


def test_an_empty_store_says_what_to_do(browser: Any, tmp_path: Path, shots: Path) -> None:
    with RemoteServer(tmp_path / "empty-home", env={"GPTSTORE_OFFLINE": "1"}) as server:
        context = browser.new_context(base_url=server.url, viewport=LAPTOP)
        page = context.new_page()
        try:
            page.goto("/")
            ready(page)
            assert "The store is empty" in page.locator("main").inner_text()
            assert "gptstore models pull" in page.locator(".empty-store").inner_text()
            shoot(page, shots, "home-empty")
            for path, words in (("/no/such/page", "no page at /no/such/page"),
                                ("/search?q=anything", "No model matches"),
                                ("/me/models", "You have no models yet"),
                                ("/me/files", "No files"), ("/me/jobs", "No jobs"),
                                ("/compare", "No generative model"),
                                ("/leaderboards", "No suites yet")):
                page.goto(path)
                ready(page)
                assert words in page.locator("main").inner_text(), path
        finally:
            context.close()
