"""Load test of fair admission: 64 concurrent streaming clients over 4 API keys, one key
flooding, against a real `gptstore serve` that requires keys.

    .venv/bin/python benchmarks/fair_admission.py [--seconds 40] [--model tiny|smollm2]

Three well-behaved keys run 16 clients each: a streaming completion (`--max-tokens`
new tokens), then a pause, again and again. Each pause is drawn between half and one
and a half times `--think` seconds (seeded per client, so both runs draw the same
pauses): with one fixed pause the clients fall into step, one stalled step makes the
next arrive together, and the time to first token measures those self-made bursts
rather than the server. The flooding key runs 16 clients, in a process of their own
started before the measurement, that send the next request the moment the last one
ends (and 50 ms after a refusal).
Two runs, same server settings, same well-behaved clients:

 (a) without the flooder, (b) with it.

Prints, per run: requests and errors per key (by status), and the p50 / p95 time to
first token of the well-behaved keys; then the ratio of (b)'s p95 to (a)'s. The issue's
bar: zero errors but the flooder's 429s, and a p95 ratio within 2x.

The model: a tiny random Llama (default; measures admission, not arithmetic) or the
built-in SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from gptstore.accounts.store import AccountStore
from gptstore.catalog.importers import ensure_builtin, import_path
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer

CLIENTS_PER_KEY = 16
KEYS = ["good1", "good2", "good3", "flood"]


def prepare(home: Path, model: str) -> tuple[str, dict[str, str]]:
    catalog = Catalog(Settings(home=home))
    if model == "smollm2":
        name = ensure_builtin(catalog).model
    else:
        from gptstore.testing.tiny import make_tiny_model

        name = "bench/tiny"
        if not catalog.exists(name):
            import_path(catalog, make_tiny_model("llama", home.parent / "tiny",
                                                 max_position_embeddings=4096), name)
    accounts = AccountStore(catalog.db)
    keys = {}
    for user in KEYS:
        accounts.add_user(user)
        keys[user] = accounts.create_key(user, scope="read")[1]
    catalog.close()
    return name, keys


async def client_loop(http: httpx.AsyncClient, url: str, key: str, body: dict[str, Any],
                      until: float, think: float, ttfts: list[float], statuses: Counter[str],
                      rng: random.Random) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            async with http.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    statuses[str(response.status_code)] += 1
                    # a flooder retries almost at once (the little pause keeps its process
                    # from taking a whole core of this 2-core machine)
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * think if think else 0.05)
                    continue
                first = None
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0].get("text"):
                            first = time.monotonic() - started
                statuses["200"] += 1
                if first is not None:
                    ttfts.append(first)
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
        if think:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)


async def clients(url: str, keys: dict[str, str], body: dict[str, Any], *, seconds: float,
                  think: float) -> tuple[dict[str, list[float]], dict[str, Counter[str]]]:
    """`CLIENTS_PER_KEY` client loops for each key of `keys` (user -> key), `seconds`
    long: their times to first token and their statuses, per user."""
    ttfts: dict[str, list[float]] = {user: [] for user in keys}
    statuses: dict[str, Counter[str]] = {user: Counter() for user in keys}
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=len(keys) * CLIENTS_PER_KEY + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        tasks = []
        for user, key in keys.items():
            for i in range(CLIENTS_PER_KEY):
                # well-behaved clients start spread over one think time
                tasks.append(asyncio.create_task(_delayed(
                    (i / CLIENTS_PER_KEY) * think,
                    client_loop(http, url, key, body, until, think, ttfts[user],
                                statuses[user], random.Random(f"{user}/{i}")))))
        await asyncio.gather(*tasks)
    return ttfts, statuses


def _flood(url: str, key: str, body: dict[str, Any], seconds: float, out: Any,
           go: Any) -> None:
    """The flooding key's clients, in a process of their own (as a flooder is another
    program, often on another machine): its hundreds of refused requests a second then
    cost the well-behaved clients' event loop nothing, only the server's and the
    machine's time. It says when it is ready and waits for `go`, so its start-up (the
    imports of this module, a second or two of CPU) falls before the measurement."""
    out.put("ready")
    go.wait()
    _, statuses = asyncio.run(clients(url, {"flood": key}, body, seconds=seconds, think=0.0))
    out.put(dict(statuses["flood"]))


def run(url: str, model: str, keys: dict[str, str], *, flood: bool, seconds: float,
        max_tokens: int, think: float) -> dict[str, Any]:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens,
            "stream": True, "temperature": 1.0, "ignore_eos": True}
    flooder = None
    if flood:
        context = multiprocessing.get_context("spawn")
        out, go = context.Queue(), context.Event()
        flooder = context.Process(target=_flood,
                                  args=(url, keys["flood"], body, seconds, out, go))
        flooder.start()
        assert out.get(timeout=120) == "ready"
        time.sleep(2)  # its imports' last work (a warm-up of the interpreter) is over
        go.set()
    good_keys = {user: keys[user] for user in KEYS[:3]}
    ttfts, statuses = asyncio.run(clients(url, good_keys, body, seconds=seconds, think=think))
    counts = {user: dict(statuses[user]) for user in good_keys}
    counts["flood"] = {}
    if flooder is not None:
        counts["flood"] = out.get(timeout=300)
        flooder.join()
    good = sorted(t for user in good_keys for t in ttfts[user])
    return {
        "statuses": counts,
        "good_ttft_p50_s": statistics.median(good) if good else None,
        "good_ttft_p95_s": good[int(0.95 * (len(good) - 1))] if good else None,
        "good_requests": len(good),
    }


async def _delayed(delay: float, coroutine: Any) -> None:
    await asyncio.sleep(delay)
    await coroutine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--think", type=float, default=3.0,
                        help="Pause of a well-behaved client between requests.")
    parser.add_argument("--rpm", type=int, default=400,
                        help="GPTSTORE_REQUESTS_PER_MINUTE of the server.")
    parser.add_argument("--batch", type=int, default=16, help="GPTSTORE_MAX_BATCH.")
    parser.add_argument("--running-per-key", type=int, default=4,
                        help="GPTSTORE_MAX_RUNNING_PER_KEY: the batch shared by 4 keys.")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="gptstore-fair-")) / "home"
    model, keys = prepare(home, args.model)
    env = {"GPTSTORE_REQUESTS_PER_MINUTE": str(args.rpm), "GPTSTORE_MAX_BATCH": str(args.batch),
           "GPTSTORE_MAX_STREAMS_PER_KEY": str(CLIENTS_PER_KEY),
           "GPTSTORE_MAX_QUEUE": "256", "GPTSTORE_WORKERS": "0",
           "GPTSTORE_MAX_RUNNING_PER_KEY": str(args.running_per_key)}
    results = {}
    with RemoteServer(home, env=env) as server:
        url = server.url + "/v1/completions"
        warm = httpx.post(url, json={"model": model, "prompt": "hi", "max_tokens": 2},
                          headers={"Authorization": f"Bearer {keys['good1']}"}, timeout=300)
        warm.raise_for_status()
        for label, flood in (("without flooder", False), ("with flooder", True)):
            results[label] = run(url, model, keys, flood=flood, seconds=args.seconds,
                                 max_tokens=args.max_tokens, think=args.think)
            time.sleep(62)  # every key's rate bucket refills before the next run
    for label, result in results.items():
        print(f"== {label}")
        for user, counts in result["statuses"].items():
            if counts:
                print(f"  {user:6s} {counts}")
        print(f"  well-behaved: {result['good_requests']} streams, time to first token "
              f"p50 {result['good_ttft_p50_s']:.3f} s, p95 {result['good_ttft_p95_s']:.3f} s")
    base, flooded = results["without flooder"], results["with flooder"]
    good_errors = {user: {s: n for s, n in flooded["statuses"][user].items() if s != "200"}
                   for user in KEYS[:3]}
    flood_other = {s: n for s, n in flooded["statuses"]["flood"].items()
                   if s not in ("200", "429")}
    ratio = flooded["good_ttft_p95_s"] / base["good_ttft_p95_s"]
    print(f"p95 time to first token of the well-behaved keys, with / without the flooder: "
          f"{ratio:.2f}x (bar: <= 2x)")
    print(f"errors of well-behaved keys: {good_errors}; flooder's other than 429: "
          f"{flood_other}")
    print(json.dumps({"ratio_p95": ratio, "results": results}))


if __name__ == "__main__":
    main()
