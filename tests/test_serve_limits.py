"""`tuner serve` under load and abuse: abandoned requests, a full queue, oversized bodies, scanners' paths,
per-request truncation, and the routes and error shape other clients expect."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from test_serve import QUERY, running

from tuner.serve import create_app
from tuner.serve_metrics import label_value

DOCS = ["Lift is produced by the pressure difference across a wing.", "Bananas are rich in potassium.", "Jet fuel."]


@pytest.fixture(scope="module")
def client(tiny_reranker):
    app = create_app(tiny_reranker, model_name="tiny", max_documents=8, max_request_bytes=4096)
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        yield c


def slowed(reranker, seconds: float, passes: list):
    """A stand-in whose every forward pass takes `seconds` (recorded in `passes`), scoring as `reranker` does."""

    class Slow:
        def __getattr__(self, name):
            return getattr(reranker, name)

        def logits_for_ids(self, ids, batch_tokens=None, groups=None, on_batch=None):
            def each(batch):
                passes.append(len(batch))
                time.sleep(seconds)
                if on_batch is not None:
                    on_batch(batch)

            return reranker.logits_for_ids(ids, batch_tokens, groups=groups, on_batch=each)

    return Slow()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def test_a_request_whose_client_left_is_not_scored_to_the_end(tiny_reranker):
    """A client that times out no longer holds the server: its drain stops at the next forward pass, a request
    still queued behind it is dropped, and the next client is answered at once (it waited for all of them)."""
    passes: list[int] = []
    # one document per forward pass (a tiny token budget), 0.25 s each: 12 documents are 3 s of work
    app = create_app(slowed(tiny_reranker, 0.25, passes), model_name="tiny", max_documents=16, max_batch_tokens=1)
    docs = [f"document {n} about wings and lift" for n in range(12)]
    with running(app) as (url, _, _):
        gone = []

        def impatient() -> None:
            try:
                httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": docs}, timeout=0.6)
            except httpx.TimeoutException:
                gone.append(True)

        callers = [threading.Thread(target=impatient) for _ in range(2)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        assert gone == [True, True]
        time.sleep(0.6)  # the drain notices at its next forward pass
        start = time.perf_counter()
        r = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": ["one"]}, timeout=30)
        waited = time.perf_counter() - start
        text = httpx.get(f"{url}/metrics", timeout=30).text
    assert r.status_code == 200
    assert waited < 1.5  # not behind the 24 abandoned documents (6 s of forward passes)
    assert sum(passes) < 12  # the abandoned documents were not all scored
    assert 'tuner_requests_total{path="/v1/rerank",code="499"} 2' in text
    assert metric(text, "tuner_queued_documents") == 0


def test_a_full_queue_answers_503_with_retry_after(tiny_reranker):
    passes: list[int] = []
    app = create_app(slowed(tiny_reranker, 0.3, passes), model_name="tiny", max_batch_tokens=1, max_queued_documents=4)
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        first: dict = {}
        caller = threading.Thread(
            target=lambda: first.setdefault("r", c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}))
        )
        caller.start()
        deadline = time.time() + 10
        while metric(c.get("/metrics").text, "tuner_queued_documents") == 0:  # the 3 documents are in
            assert time.time() < deadline
            time.sleep(0.02)
        busy = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:2]})  # 3 + 2 > 4
        fits = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:1]})  # 3 + 1 = 4
        caller.join(30)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "--max-queued-documents" in busy.json()["error"]["message"]
    assert busy.json()["error"]["type"] == "server_error"  # a busy server, not an invalid request
    assert fits.status_code == 200 and first["r"].status_code == 200


def test_a_request_larger_than_the_queue_bound_is_taken_when_the_queue_is_empty(tiny_reranker):
    """--max-queued-documents bounds what waits behind other work, not a request's size: a request over it is
    taken whole when nothing is queued (else it could never be served), and the next one is refused."""
    from tuner.serve import Batcher, ServerBusy

    batcher = Batcher(tiny_reranker, max_queued=2)  # not started: what is submitted stays queued
    ids = tiny_reranker.encode([(QUERY, d, None) for d in DOCS])
    future = batcher.submit(ids)
    with pytest.raises(ServerBusy, match="3 documents are queued"):
        batcher.submit(ids[:1])
    future.cancel()


def test_oversized_bodies_get_413_before_parsing(client):
    big = {"query": QUERY, "documents": ["x" * 5000]}
    r = client.post("/v1/rerank", json=big)  # Content-Length over the 4096-byte limit
    assert r.status_code == 413 and r.json()["error"]["code"] == 413 and "4096 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the body grows past the limit while it is read
        yield b'{"query": "q", "documents": ["'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"]}'

    r = client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-request-mb" in r.json()["error"]["message"]
    assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
    head = b'{"query": "q", "documents": ["'
    exact = head + b"x" * (4096 - len(head) - 3) + b'"]}'  # the limit itself is allowed
    r = client.post("/v1/rerank", content=exact, headers={"content-type": "application/json"})
    assert len(exact) == 4096 and r.status_code == 200, r.text


def test_metrics_label_by_route_not_by_any_path_a_client_tries(client):
    for path in ("/zz1", "/zz2", '/a"b', "/v1/rerank/../x"):
        assert client.get(path).status_code == 404
    text = client.get("/metrics").text
    assert "/zz1" not in text and '/a"b' not in text and 'path="/a' not in text
    assert 'tuner_requests_total{path="other",code="404"}' in text
    assert label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_metrics_render_cumulative_buckets_counts_and_gauges():
    """The text a Prometheus scrape reads: `le` buckets are cumulative and take a value equal to their bound,
    _sum and _count are the observations', and the counters and gauges are what was added."""
    from tuner.serve_metrics import Metrics

    m = Metrics()
    for rows, requests in ((1, 1), (2, 1), (3, 2), (300, 2)):
        m.observe_batch(rows=rows, requests=requests)
    m.add_documents(5)
    m.add_documents(2)
    m.inflight(+1)
    m.set_queued(7)
    m.set_queued(3)  # a gauge: the last value set
    m.observe_request("/v1/rerank", 200, 0.01)
    values = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in m.render().splitlines() if line[:1] != "#"}
    assert values['tuner_batch_rows_bucket{le="1"}'] == "1"  # a value equal to its bound is in that bucket
    assert values['tuner_batch_rows_bucket{le="2"}'] == "2"
    assert values['tuner_batch_rows_bucket{le="4"}'] == "3"
    assert values['tuner_batch_rows_bucket{le="256"}'] == "3"
    assert values['tuner_batch_rows_bucket{le="+Inf"}'] == "4"
    assert values["tuner_batch_rows_sum"] == "306.000000" and values["tuner_batch_rows_count"] == "4"
    assert values['tuner_batch_requests_bucket{le="1"}'] == "2" and values['tuner_batch_requests_bucket{le="2"}'] == "4"
    assert values["tuner_forward_passes_total"] == "4" and values["tuner_documents_total"] == "7"
    assert values["tuner_inflight_requests"] == "1" and values["tuner_queued_documents"] == "3"
    assert values['tuner_request_duration_seconds_bucket{path="/v1/rerank",le="0.005"}'] == "0"
    assert values['tuner_request_duration_seconds_bucket{path="/v1/rerank",le="0.01"}'] == "1"
    assert values['tuner_request_duration_seconds_count{path="/v1/rerank"}'] == "1"
    assert values['tuner_requests_total{path="/v1/rerank",code="200"}'] == "1"


def test_cohere_v2_and_vllm_v1_score_routes(client, tiny_reranker):
    expected = tiny_reranker.score(QUERY, DOCS)
    r = client.post("/v2/rerank", json={"model": "tiny", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == sorted(range(3), key=lambda i: -expected[i])[:2]
    assert results[0]["relevance_score"] == pytest.approx(max(expected), abs=1e-6)
    r = client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS})
    assert [x["score"] for x in r.json()["data"]] == pytest.approx(expected, abs=1e-6)


def test_request_truncation_fields_cut_documents_as_the_reranker_does(client, tiny_reranker):
    """vLLM's truncate_prompt_tokens and Cohere's max_tokens_per_doc are honoured (they were ignored), and cut
    only the document, as the contract's truncation does."""
    long_doc = " ".join(f"lift{n} wing pressure" for n in range(100))
    docs = [long_doc, DOCS[0]]
    for cap in (90, 120):
        want = tiny_reranker.logits_for_ids(tiny_reranker.encode([(QUERY, d, None) for d in docs], max_length=cap))
        r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "truncate_prompt_tokens": cap})
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert got == pytest.approx({i: tiny_reranker._normalize(x) for i, x in enumerate(want)}, abs=1e-6)
        assert r.json()["usage"]["prompt_tokens"] <= 2 * cap
        r = client.post("/score", json={"text_1": QUERY, "text_2": docs, "truncate_prompt_tokens": cap})
        assert [x["score"] for x in r.json()["data"]] == pytest.approx(
            [tiny_reranker._normalize(x) for x in want], abs=1e-6
        )
    ids = tiny_reranker.encode([(QUERY, long_doc, None)], max_document_tokens=7)
    r = client.post("/v2/rerank", json={"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 7})
    assert r.json()["usage"]["prompt_tokens"] == len(ids[0])
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(
        tiny_reranker._normalize(tiny_reranker.logits_for_ids(ids)[0]), abs=1e-6
    )
    same = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "truncate_prompt_tokens": -1})
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": docs})
    assert same.json()["results"] == plain.json()["results"]
    at_budget = {"query": QUERY, "documents": docs, "truncate_prompt_tokens": tiny_reranker.max_length}
    assert client.post("/v1/rerank", json=at_budget).json()["results"] == plain.json()["results"]  # the cap itself


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ({"truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens", "over this server's max_length"),
        ({"truncate_prompt_tokens": 40}, "truncate_prompt_tokens", "leaves no room"),  # the prefix + suffix alone
        ({"truncate_prompt_tokens": 60}, "query", "truncate_prompt_tokens: 60 is too small"),  # no room for the query
        ({"truncate_prompt_tokens": 60, "instruction": "judge " * 60}, "instruction", "60 is too small"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens", "greater than or equal to -1"),
        ({"max_tokens_per_doc": 0}, "max_tokens_per_doc", "greater than or equal to 1"),
    ],
)
def test_bad_truncation_fields_are_named(client, payload, field, says):
    r = client.post("/v1/rerank", json={"query": QUERY + " with many more words " * 4, "documents": DOCS, **payload})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field == error["field"] and error["code"] == 400 and says in error["message"]


def test_an_instruction_over_the_budget_is_named(tiny_reranker):
    long = "judge relevance " * (tiny_reranker.encoder.max_length // 2)
    with running(create_app(tiny_reranker, model_name="tiny")) as (url, _, _):
        for path, body in [
            ("/v1/rerank", {"query": QUERY, "documents": DOCS, "instruction": long}),
            ("/v1/score", {"queries": QUERY, "documents": DOCS, "instruction": long}),
        ]:
            r = httpx.post(f"{url}{path}", json=body, timeout=60)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == "instruction" and "shorten the instruction" in error["message"], path


def test_optional_fields_sent_as_null_take_their_defaults(client):
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": None, "top_n": None})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 3 and all("document" in x for x in r.json()["results"])


def test_with_an_api_key_the_interactive_pages_are_off(tiny_reranker):
    app = create_app(tiny_reranker, model_name="tiny", api_key="k")
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path).status_code in (401, 404)
    open_app = create_app(tiny_reranker, model_name="tiny")
    with running(open_app) as (url, _, _):
        assert httpx.get(f"{url}/openapi.json", timeout=30).status_code == 200


def test_a_request_instruction_off_the_calibrations_is_logged_once(tiny_reranker, caplog):
    """The stored calibration was fitted with one instruction; a request that brings its own gets probabilities
    that are not calibrated: the server log says so, once per instruction (the Python API warns the same way)."""
    from tuner.scoring import Reranker

    fitted = {"temperature": 2.0, "bias": 0.1, "instruction": "Find fruit", "max_length": tiny_reranker.max_length}
    calibrated = Reranker(tiny_reranker.model, tiny_reranker.tokenizer, instruction="Find fruit", calibration=fitted)
    caplog.set_level("WARNING", logger="tuner.serve")
    with running(create_app(calibrated, model_name="tiny")) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        for instruction in (None, "Find fruit", "Find wings", "Find wings"):
            r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "instruction": instruction})
            assert r.status_code == 200, r.text
    said = [x.getMessage() for x in caplog.records if "calibration in tuner.json" in x.getMessage()]
    assert len(said) == 1 and "fitted with the instruction 'Find fruit', not 'Find wings'" in said[0]
    assert "--no-calibration" in said[0]  # the server's switch, not only the Python API's calibrated=False


def test_a_request_cut_off_by_the_graceful_shutdown_timeout_stops_its_drain(tiny_reranker):
    """uvicorn cancels the requests still running when its graceful-shutdown timeout ends; their drain used to be
    scored to the end for nobody (the lifespan then waited for it up to a minute), so the server outlived the
    timeout by as long as the work it had queued. It stops at the next forward pass."""
    passes: list[int] = []
    # one document per forward pass, 0.2 s each: 40 documents are 8 s of work
    app = create_app(slowed(tiny_reranker, 0.2, passes), model_name="tiny", max_documents=64, max_batch_tokens=1)
    with running(app, log_level="critical", timeout_graceful_shutdown=0.3) as (url, server, thread):
        docs = [f"document {n} about wings and lift" for n in range(40)]
        answers: list[httpx.Response] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": docs}, timeout=30)
            )
        )
        caller.start()
        deadline = time.time() + 20
        while not passes:  # the drain is running
            assert time.time() < deadline
            time.sleep(0.02)
        start = time.perf_counter()
        server.should_exit = True  # what SIGTERM does
        thread.join(30)
        stopped = time.perf_counter() - start
        caller.join(30)
        assert not thread.is_alive()
    assert stopped < 3  # the timeout and one forward pass, not the 8 s of the whole drain
    assert sum(passes) < 40
    # the client cut off is told so, in the error body of every other error, and may retry elsewhere: it got
    # uvicorn's plain-text 500 "Internal Server Error" (and the log a traceback, "Exception in ASGI application")
    (answer,) = answers
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert "shutting down" in answer.json()["error"]["message"]
    assert app.state.metrics.requests == {("/v1/rerank", 503): 1}  # counted as answered, not as a 500


def test_a_large_request_is_scored_in_turns_with_the_small_ones_behind_it(tiny_reranker, monkeypatch):
    """A drain took the request at the head of the queue whole: a 1-document request waited for all of a
    5000-document one (78 s on CPU). Drains now take at most MAX_PAIRS_PER_DRAIN prompts, a large request's in
    turns with the requests that arrived meanwhile, and its parts' scores are put back together in order."""
    from tuner import serve as serve_mod
    from tuner.serve import Batcher, ClientGone
    from tuner.serve_metrics import Metrics

    monkeypatch.setattr(serve_mod, "MAX_PAIRS_PER_DRAIN", 4)
    passes: list[int] = []
    batcher = Batcher(slowed(tiny_reranker, 0.05, passes), max_batch_tokens=1, metrics=Metrics())  # 1 prompt a pass
    big = [(QUERY, f"document {n} about wings, lift and drag", None) for n in range(24)]
    small = [("which fruit has potassium?", doc, "Find fruit facts") for doc in DOCS]
    done: list[str] = []
    first = batcher.submit(tiny_reranker.encode(big), [(q, i) for q, _, i in big])
    first.add_done_callback(lambda _: done.append("big"))
    batcher.start()
    while not passes:  # the large request's first drain is running
        time.sleep(0.01)
    second = batcher.submit(tiny_reranker.encode(small), [(q, i) for q, _, i in small])
    second.add_done_callback(lambda _: done.append("small"))
    big_logits, big_tokens = first.result(timeout=60)
    small_logits, _ = second.result(timeout=60)
    assert done == ["small", "big"]
    assert len(passes) == len(big) + len(small)  # each prompt scored once
    assert big_logits == pytest.approx(tiny_reranker.logits_for_ids(tiny_reranker.encode(big)), abs=1e-5)
    assert small_logits == pytest.approx(tiny_reranker.logits_for_ids(tiny_reranker.encode(small)), abs=1e-5)
    assert big_tokens == sum(len(ids) for ids in tiny_reranker.encode(big))
    # a large request abandoned between two of its drains is not taken again
    passes.clear()
    third = batcher.submit(tiny_reranker.encode(big), [(q, i) for q, _, i in big])
    while not passes:
        time.sleep(0.01)
    batcher.abandon(third)
    with pytest.raises(ClientGone):
        third.result(timeout=60)
    batcher.stop()
    assert len(passes) <= 8  # the drain it was in, at most one more: not its 24 prompts


def test_a_request_abandoned_between_two_of_its_drains_is_not_taken_again(tiny_reranker, monkeypatch):
    """A drain shared with a live request runs to its end; the abandoned large request behind it must be dropped at
    its next turn (ClientGone), not scored in drain after drain for nobody."""
    from tuner import serve as serve_mod
    from tuner.serve import Batcher, ClientGone
    from tuner.serve_metrics import Metrics

    monkeypatch.setattr(serve_mod, "MAX_PAIRS_PER_DRAIN", 4)
    passes: list[int] = []
    batcher = Batcher(slowed(tiny_reranker, 0.05, passes), max_batch_tokens=1, metrics=Metrics())  # 1 prompt a pass
    small = [("which fruit has potassium?", doc, None) for doc in DOCS[:2]]
    big = [(QUERY, f"document {n} about wings, lift and drag", None) for n in range(24)]
    live = batcher.submit(tiny_reranker.encode(small))
    gone = batcher.submit(tiny_reranker.encode(big))
    batcher.start()  # the first drain: both of `small`, the first two of `big`
    while not passes:
        time.sleep(0.01)
    batcher.abandon(gone)  # while that drain runs: it goes on, for `small`
    assert len(live.result(timeout=60)[0]) == len(small)
    with pytest.raises(ClientGone):
        gone.result(timeout=60)
    batcher.stop()
    assert len(passes) == 4  # that drain alone: none of the other 22 prompts of `big`


def test_a_client_gone_while_sending_its_body_is_counted_as_499(tiny_reranker):
    """A client that dropped the connection halfway through its body was counted as a 400 (FastAPI's "error
    parsing the body"), as if it had sent a bad request; it is nginx's 499, as for one gone while scored."""
    import asyncio

    app = create_app(tiny_reranker, model_name="tiny")
    scope = {
        "type": "http",
        "http_version": "1.1",
        "scheme": "http",
        "method": "POST",
        "path": "/v1/rerank",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }

    async def call(scope, messages):
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()

    partial = [
        {"type": "http.request", "body": b'{"query": "q", "docu', "more_body": True},
        {"type": "http.disconnect"},
    ]
    status, _ = asyncio.run(call(scope, partial))
    assert status == 499
    _, text = asyncio.run(call({**scope, "method": "GET", "path": "/metrics", "headers": []}, []))
    assert 'tuner_requests_total{path="/v1/rerank",code="499"} 1' in text
    assert 'code="400"' not in text
    whole = [{"type": "http.request", "body": b'{"query": "q"}', "more_body": False}]  # a bad request stays a 400
    assert asyncio.run(call(scope, whole))[0] == 400
