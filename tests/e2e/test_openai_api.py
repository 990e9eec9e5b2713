"""The OpenAI-compatible API of a real `gptstore serve`, driven by the official `openai`
package: models, chat (plain and streaming), completions, a classifier, two adapters in
concurrent requests, and every error case."""

from __future__ import annotations

import contextlib
import json
import threading
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
from gptstore.testing.tiny import make_tiny_adapter, make_tiny_classifier, make_tiny_model

pytestmark = pytest.mark.e2e
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-store")
    home = root / "home"
    base = make_tiny_model("llama", root / "base", seed=1)
    ad1 = make_tiny_adapter(base, root / "ad1", seed=1)
    ad2 = make_tiny_adapter(base, root / "ad2", seed=2)
    clf = make_tiny_classifier(base, root / "clf", ["negative", "positive"])
    catalog = Catalog(Settings(home=home))
    base_version = import_path(catalog, base, "acme/tiny")
    catalog.publish("acme/ad1", ad1, kind="adapter", base=base_version.ref)
    catalog.publish("acme/ad2", ad2, kind="adapter", base=base_version.ref)
    catalog.publish("acme/clf", clf, task="classification",
                    lineage={"label_names": ["negative", "positive"]})
    catalog.close()
    return {"home": home, "base": base, "ad1": ad1, "ad2": ad2, "clf": clf}


@pytest.fixture(scope="module")
def server(store: dict[str, Path]) -> Iterator[RemoteServer]:
    with RemoteServer(store["home"], env={"GPTSTORE_INFERENCE_DTYPE": "float32"}) as srv:
        yield srv


@pytest.fixture
def client(server: RemoteServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def hf_greedy(model_dir: Path, prompt_ids: list[int], max_new: int,
              adapter: Path | None = None) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(
            1, len(prompt_ids), dtype=torch.long), max_new_tokens=max_new, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def chat_prompt_ids(model_dir: Path) -> tuple[list[int], object]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), tokenizer


def test_models(client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["acme/ad1", "acme/ad2", "acme/clf", "acme/tiny"]
    assert client.models.retrieve("acme/tiny@1").id == "acme/tiny@1"
    for missing in ("acme/tiny@7", "acme/none", "gpt-4o"):
        err = _error(lambda missing=missing: client.models.retrieve(missing))
        assert err.status_code == 404 and err.body["code"] == "model_not_found", missing


def test_chat_greedy_matches_transformers(client: openai.OpenAI,
                                          store: dict[str, Path]) -> None:
    ids, tokenizer = chat_prompt_ids(store["base"])
    expected = tokenizer.decode(hf_greedy(store["base"], ids, 12), skip_special_tokens=True)
    reply = client.chat.completions.create(model="acme/tiny", messages=CHAT, max_tokens=12,
                                           temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.total_tokens == len(ids) + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in {"stop", "length"}


def test_chat_streaming(client: openai.OpenAI, server: RemoteServer) -> None:
    full = client.chat.completions.create(model="acme/tiny", messages=CHAT, max_tokens=10,
                                          temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="acme/tiny", messages=CHAT, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"stop", "length"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "model": "acme/tiny", "messages": CHAT, "max_tokens": 3, "stream": True},
            timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_usage_counts_the_prompt_tokens_read_from_the_prefix_cache(
        client: openai.OpenAI) -> None:
    """`usage.prompt_tokens_details.cached_tokens`, as OpenAI reports prompt caching: a
    second chat behind the same system prompt reads it from the cache and says so,
    streamed or not, with `n` choices and in the completions API too."""
    system = {"role": "system", "content": "You answer in one short sentence. " * 6}
    first = client.chat.completions.create(
        model="acme/tiny", messages=[system, {"role": "user", "content": "Hi there"}],
        max_tokens=2, temperature=0).usage
    second = client.chat.completions.create(
        model="acme/tiny", messages=[system, {"role": "user", "content": "Tell me more"}],
        max_tokens=2, temperature=0, n=2).usage
    assert first.prompt_tokens_details.cached_tokens < 16
    cached = second.prompt_tokens_details.cached_tokens
    # all but what follows the shared part (the user's turn, told apart within 8 tokens)
    assert second.prompt_tokens - 16 <= cached < second.prompt_tokens
    streamed = list(client.chat.completions.create(
        model="acme/tiny", messages=[system, {"role": "user", "content": "Tell me more"}],
        max_tokens=2, temperature=0, stream=True, stream_options={"include_usage": True}))
    # the same prompt again: all of it but what is left of its last block of 8 tokens
    usage = streamed[-1].usage
    assert usage.prompt_tokens - 8 <= usage.prompt_tokens_details.cached_tokens > cached
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    prompt = "Once upon a time there was a tiny model that told long stories. " * 3
    plain = client.completions.create(model="acme/tiny", prompt=[prompt, prompt + "Then"],
                                      max_tokens=2, temperature=0).usage
    again = client.completions.create(model="acme/tiny", prompt=[prompt, prompt + "Then"],
                                      max_tokens=2, temperature=0).usage
    assert again.prompt_tokens_details.cached_tokens > plain.prompt_tokens_details.cached_tokens
    assert again.prompt_tokens_details.cached_tokens < again.prompt_tokens


def test_completions(client: openai.OpenAI, store: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(store["base"])
    prompt = "The capital of France is"
    ids = list(tokenizer(prompt)["input_ids"])
    expected = tokenizer.decode(hf_greedy(store["base"], ids, 6), skip_special_tokens=True)
    out = client.completions.create(model="acme/tiny", prompt=prompt, max_tokens=6,
                                    temperature=0, echo=True, logprobs=2)
    choice = out.choices[0]
    assert choice.text == prompt + expected
    # echo + logprobs: the prompt's tokens first (the first without a logprob), then the
    # generated ones
    assert len(choice.logprobs.tokens) == len(ids) + out.usage.completion_tokens
    assert choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.top_logprobs[0] is None
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs[1:])
    assert "".join(choice.logprobs.tokens[:len(ids)]) == prompt
    assert choice.logprobs.text_offset[len(ids)] == len(prompt)
    several = client.completions.create(model="acme/tiny", prompt=[prompt, "Hello"],
                                        max_tokens=3, n=2, seed=7, temperature=1.0)
    assert sorted(c.index for c in several.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason in {"stop", "length"} for c in several.choices)
    again = client.completions.create(model="acme/tiny", prompt=[prompt, "Hello"],
                                      max_tokens=3, n=2, seed=7, temperature=1.0)
    assert [c.text for c in several.choices] == [c.text for c in again.choices]
    streamed = client.completions.create(model="acme/tiny", prompt=prompt, max_tokens=6,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected


def test_echo_scores_the_prompt_as_evaluation_harnesses_ask(client: openai.OpenAI,
                                                             store: dict[str, Path]) -> None:
    """lm-evaluation-harness's loglikelihood request (`local-completions`): token-id
    prompts in a batch, echo, max_tokens 1, logprobs 1, temperature 0; it sums
    token_logprobs[ctxlen:-1] and checks each token against max(top_logprobs)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(store["base"], dtype=torch.float32).eval()
    prompts = [[5, 17, 99, 230, 41, 8, 77], [300, 12, 12, 64]]
    out = client.completions.create(model="acme/tiny", prompt=prompts, echo=True,
                                    max_tokens=1, logprobs=1, temperature=0, seed=1234)
    for prompt, choice in zip(prompts, sorted(out.choices, key=lambda c: c.index),
                              strict=True):
        with torch.inference_mode():
            reference = torch.log_softmax(model(torch.tensor([prompt])).logits[0], dim=-1)
        scores = choice.logprobs.token_logprobs
        assert len(scores) == len(prompt) + 1 and scores[0] is None
        expected = [reference[i - 1, prompt[i]].item() for i in range(1, len(prompt))]
        assert scores[1:-1] == pytest.approx(expected, abs=1e-4)
        greedy = [reference[i - 1].argmax().item() == prompt[i] for i in range(1, len(prompt))]
        harness = [lp == max(top.values()) for lp, top in
                   zip(scores[1:-1], choice.logprobs.top_logprobs[1:-1], strict=True)]
        assert harness == greedy
    # max_tokens 0 (the older harnesses' and OpenAI's legacy form): the prompt, scored
    only = client.completions.create(model="acme/tiny", prompt="The capital of France is",
                                     echo=True, max_tokens=0, logprobs=0)
    assert only.choices[0].text == "The capital of France is"
    assert only.usage.completion_tokens == 0 and only.choices[0].finish_reason == "length"
    assert all(lp <= 0 for lp in only.choices[0].logprobs.token_logprobs[1:])
    err = _error(lambda: client.completions.create(model="acme/tiny", prompt="x",
                                                   max_tokens=0))
    assert err.status_code == 400 and err.body["param"] == "max_tokens"
    # streamed: the echoed prompt comes first, with its scores
    chunks = [c for c in client.completions.create(
        model="acme/tiny", prompt=prompts[0], echo=True, max_tokens=2, logprobs=1,
        temperature=0, stream=True) if c.choices]
    assert chunks[0].choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        out.choices[0].logprobs.token_logprobs[1:-1], abs=1e-5)


def test_prompt_and_max_tokens_must_fit_the_context(client: openai.OpenAI) -> None:
    prompt = list(range(10, 210))  # 200 tokens; the tiny model's context is 256
    err = _error(lambda: client.completions.create(model="acme/tiny", prompt=prompt,
                                                   max_tokens=100))
    assert err.status_code == 400 and err.body["code"] == "context_length_exceeded"
    assert err.body["param"] == "prompt" and "at most 56" in err.body["message"]
    long = [{"role": "user", "content": "word " * 40}]  # ~170 tokens here
    err = _error(lambda: client.chat.completions.create(model="acme/tiny", messages=long,
                                                        max_tokens=150))
    assert err.status_code == 400 and err.body["code"] == "context_length_exceeded"
    assert err.body["param"] == "messages"
    # without max_tokens, a chat reply fills what the context leaves, and a completion's
    # default of 16 is capped there too
    assert client.chat.completions.create(model="acme/tiny", messages=long,
                                          temperature=0).choices[0].finish_reason
    capped = client.completions.create(model="acme/tiny", prompt=list(range(10, 252)),
                                       temperature=0, extra_body={"ignore_eos": True})
    assert capped.usage.completion_tokens == 14 and capped.choices[0].finish_reason == "length"


def test_classifier(server: RemoteServer, store: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["a great film", "dull and bad acting, I hated it"]
    resp = httpx.post(server.url + "/v1/classifications",
                      json={"model": "acme/clf", "input": texts}, timeout=60)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    tokenizer = AutoTokenizer.from_pretrained(store["clf"])
    model = AutoModelForSequenceClassification.from_pretrained(store["clf"],
                                                               dtype=torch.float32)
    for item, text in zip(data, texts, strict=True):
        with torch.inference_mode():
            probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        ours = {p["label"]: p["probability"] for p in item["probabilities"]}
        assert ours == pytest.approx({"negative": probs[0].item(), "positive": probs[1].item()},
                                     abs=1e-4)
        assert item["label"] == max(ours, key=ours.__getitem__)
    single = httpx.post(server.url + "/v1/classifications",
                        json={"model": "acme/clf", "input": "fine"}).json()
    assert len(single["data"]) == 1
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/classifications" in schema["paths"]


def test_two_adapters_in_concurrent_requests(client: openai.OpenAI,
                                             store: dict[str, Path]) -> None:
    models = ["acme/ad1", "acme/ad2", "acme/tiny"] * 2
    sequential = {m: client.chat.completions.create(
        model=m, messages=CHAT, max_tokens=12, temperature=0).choices[0].message.content
        for m in set(models)}
    assert len(set(sequential.values())) == 3  # the adapters really change the output
    results: dict[int, str] = {}

    def ask(i: int, model: str) -> None:
        results[i] = client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=12, temperature=0).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(models))] == [sequential[m] for m in models]
    ids, tokenizer = chat_prompt_ids(store["base"])
    expected = tokenizer.decode(hf_greedy(store["base"], ids, 12, adapter=store["ad1"]),
                                skip_special_tokens=True)
    assert sequential["acme/ad1"] == expected


def _error(call: object) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_errors(client: openai.OpenAI) -> None:
    err = _error(lambda: client.chat.completions.create(model="acme/nope", messages=CHAT))
    assert err.status_code == 404 and err.body["code"] == "model_not_found"
    assert err.body["param"] == "model"
    err = _error(lambda: client.chat.completions.create(model="bad name", messages=CHAT))
    assert err.status_code == 400 and err.body["param"] == "model"
    err = _error(lambda: client.chat.completions.create(model="acme/tiny", messages=CHAT,
                                                        temperature=3))
    assert err.status_code == 400 and err.body["param"] == "temperature"
    err = _error(lambda: client.chat.completions.create(model="acme/tiny", messages=[]))
    assert err.status_code == 400 and err.body["param"] == "messages"
    err = _error(lambda: client.completions.create(model="acme/tiny", prompt="x", n=0))
    assert err.status_code == 400 and err.body["param"] == "n"
    long = [{"role": "user", "content": "word " * 400}]
    err = _error(lambda: client.chat.completions.create(model="acme/tiny", messages=long))
    assert err.status_code == 400 and err.body["param"] == "messages"
    assert "context" in err.body["message"]
    err = _error(lambda: client.chat.completions.create(model="acme/clf", messages=CHAT))
    assert err.status_code == 400 and err.body["param"] == "model"
    err = _error(lambda: client.completions.create(model="acme/tiny", prompt="x",
                                                   suffix="y"))
    assert err.status_code == 400 and err.body["param"] == "suffix"
    assert err.body["type"] == "invalid_request_error"
    # OpenAI's limits: at most 4 stop strings, completions logprobs at most 5
    err = _error(lambda: client.chat.completions.create(model="acme/tiny", messages=CHAT,
                                                        stop=list("abcde")))
    assert err.status_code == 400 and err.body["param"].startswith("stop")
    err = _error(lambda: client.completions.create(model="acme/tiny", prompt="x",
                                                   logprobs=6))
    assert err.status_code == 400 and err.body["param"] == "logprobs"
    err = _error(lambda: client.completions.create(model="acme/tiny", prompt="x",
                                                   logit_bias={"x": 1}))
    assert err.status_code == 400 and err.body["param"] == "logit_bias.x"  # the bad key


def test_logit_bias_bans_a_token(client: openai.OpenAI, store: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(store["base"])
    model = AutoModelForCausalLM.from_pretrained(store["base"], dtype=torch.float32).eval()
    ids = tokenizer("Once upon", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        best, second = model(input_ids=ids).logits[0, -1].topk(2).indices.tolist()

    def first(**extra: object) -> str:
        return client.completions.create(model="acme/tiny", prompt="Once upon", max_tokens=1,
                                          temperature=0, **extra).choices[0].text

    assert first() == tokenizer.decode([best])
    assert first(logit_bias={str(best): -100}) == tokenizer.decode([second])


def _engine(server: RemoteServer) -> dict[str, object]:
    return httpx.get(server.url + "/api/engine").json()


def test_abandoned_stream_frees_its_slot(server: RemoteServer) -> None:
    with httpx.stream("POST", server.url + "/v1/completions", json={
            "model": "acme/tiny", "prompt": "Once upon a time", "max_tokens": 200,
            "stream": True, "temperature": 1.0, "ignore_eos": True}, timeout=60) as resp:
        lines = resp.iter_lines()
        next(lines)
        assert _engine(server)["running"] == 1
    deadline = time.monotonic() + 10
    while _engine(server)["running"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = _engine(server)
    assert stats["running"] == 0 and stats["waiting"] == 0


def test_busy_server_answers_503_with_retry_after(tmp_path: Path) -> None:
    # A long context so the two first requests outlive the check (the tiny model decodes
    # hundreds of tokens a second); closing their streams cancels them at the end.
    home = tmp_path / "home"
    catalog = Catalog(Settings(home=home))
    import_path(catalog, make_tiny_model("llama", tmp_path / "long",
                                         max_position_embeddings=16384), "acme/long")
    catalog.close()
    env = {"GPTSTORE_MAX_BATCH": "1", "GPTSTORE_MAX_QUEUE": "1", "GPTSTORE_MAX_TOKENS": "16000"}
    body = {"model": "acme/long", "prompt": "Once", "max_tokens": 16000, "stream": True,
            "temperature": 1.0, "ignore_eos": True}
    # generous timeouts: the first request loads torch and the model
    with RemoteServer(home, env=env) as srv, \
            httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120) as first:
        # keep the iterator: a discarded one closes the stream (and cancels it)
        first_lines = first.iter_lines()
        next(first_lines)
        # the second waits for a place before its response starts (the fair gate), so it
        # runs on a thread; its client gives up after a few seconds
        def second_request() -> None:
            with contextlib.suppress(httpx.ReadTimeout):
                httpx.post(srv.url + "/v1/completions", json=body, timeout=6)

        second = threading.Thread(target=second_request)
        second.start()
        deadline = time.monotonic() + 10
        while _engine(srv)["waiting"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _engine(srv)["running"] == 1
        third = httpx.post(srv.url + "/v1/completions", json={**body, "stream": False},
                           timeout=60)
        assert third.status_code == 503
        assert int(third.headers["Retry-After"]) >= 1
        assert "busy" in json.loads(third.text)["error"]["message"]
        second.join()
        # its client left while it waited: its place in the queue is given up at once
        deadline = time.monotonic() + 5
        while _engine(srv)["waiting"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _engine(srv)["waiting"] == 0 and _engine(srv)["running"] == 1
