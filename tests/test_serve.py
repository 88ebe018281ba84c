"""`tuner serve`: a real uvicorn server on 127.0.0.1, spoken to with httpx."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from tuner.serve import create_app

DOCS = [
    "Lift is produced by the pressure difference across a wing.",
    {"text": "Bananas are rich in potassium.", "title": "Fruit"},
    "量子计算利用叠加和纠缠来处理信息。",
    "The engine burns fuel to produce thrust.",
    "",
]
QUERY = "what produces lift on a wing?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, **options):
    """Run `app` with uvicorn in a thread on a free port; yield its base URL; shut it down gracefully.
    `options`: more uvicorn.Config arguments."""
    import uvicorn

    port = _free_port()
    config = {"log_level": "warning", **options}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server, thread
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(tiny_reranker):
    app = create_app(tiny_reranker, model_name="tiny", api_key=None, max_documents=8, max_batch_tokens=2048)
    with running(app) as (url, _, _):
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def test_rerank_schema_order_top_n_and_scores_equal_offline(client, tiny_reranker):
    offline = tiny_reranker.score(QUERY, DOCS)
    for path in ("/v1/rerank", "/rerank"):
        r = client.post(path, json={"model": "tiny", "query": QUERY, "documents": DOCS, "top_n": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny" and body["id"].startswith("rerank-")
        prompts = tiny_reranker.encode([(QUERY, d, None) for d in DOCS])
        assert body["usage"]["prompt_tokens"] == sum(len(x) for x in prompts)
        results = body["results"]
        assert [x["index"] for x in results] == sorted(range(len(DOCS)), key=lambda i: -offline[i])[:3]
        for row in results:
            assert row["relevance_score"] == pytest.approx(offline[row["index"]], abs=1e-6)
            doc = DOCS[row["index"]]
            assert row["document"] == ({"text": doc} if isinstance(doc, str) else doc)
    # no top_n → all documents; return_documents false → no document field; instruction is honoured
    r = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False, "instruction": "Find fruit"}
    )
    body = r.json()
    assert len(body["results"]) == len(DOCS) and all("document" not in x for x in body["results"])
    everything = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0}).json()
    assert len(everything["results"]) == len(DOCS)  # top_n 0 means every document, as vLLM reads it
    custom = tiny_reranker.score(QUERY, DOCS, instruction="Find fruit")
    served = {x["index"]: x["relevance_score"] for x in body["results"]}
    assert served == pytest.approx(dict(enumerate(custom)), abs=1e-6)
    assert custom != pytest.approx(offline, abs=1e-6)
    # max_documents (8 here) is the most a request may hold, not one more than it may
    full = client.post("/v1/rerank", json={"query": QUERY, "documents": [f"d{n}" for n in range(8)]})
    assert full.status_code == 200 and len(full.json()["results"]) == 8


def test_rerank_breaks_ties_by_input_order(tiny_reranker):
    """Equal scores keep the documents' input order, as Reranker.rank does (a stand-in scores every pair 0)."""

    class Tied:
        def __getattr__(self, name):
            return getattr(tiny_reranker, name)

        def logits_for_ids(self, ids, batch_tokens=None, groups=None, on_batch=None):
            return [0.0] * len(ids)

    with running(create_app(Tied(), model_name="tiny")) as (url, _, _):
        r = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS[:4], "top_n": 3}, timeout=30)
    assert [x["index"] for x in r.json()["results"]] == [0, 1, 2]


def test_a_title_only_document_is_scored_as_the_python_api_scores_it(client, tiny_reranker):
    """The Python API reads {"title": ...} without text (tuner.contract.document_text); the server refused it
    with `documents.0.text: Field required`."""
    docs = [{"title": "Lift"}, {"title": "Fruit", "text": "Bananas."}, "plain"]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    by_index = {row["index"]: row for row in r.json()["results"]}
    assert [by_index[i]["relevance_score"] for i in range(3)] == pytest.approx(tiny_reranker.score(QUERY, docs))
    assert by_index[0]["document"] == {"text": "", "title": "Lift"}  # as it was sent, with the text clients read
    r = client.post("/score", json={"queries": QUERY, "documents": {"title": "Lift"}})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["score"] == pytest.approx(tiny_reranker.score(QUERY, [{"title": "Lift"}])[0])
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": [{"titel": "Lift"}]})
    message = r.json()["error"]["message"]
    assert message == "documents.0: a document object needs 'text' (or 'title'); got keys 'titel'"


def test_score_endpoint_vllm_shape(client, tiny_reranker):
    r = client.post("/score", json={"queries": QUERY, "documents": DOCS[:3]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [x["index"] for x in data] == [0, 1, 2]
    assert [x["score"] for x in data] == pytest.approx(tiny_reranker.score(QUERY, DOCS[:3]), abs=1e-6)
    one = client.post("/score", json={"queries": QUERY, "documents": DOCS[1]})  # a single document object
    assert one.status_code == 200, one.text
    assert one.json()["data"][0]["score"] == pytest.approx(tiny_reranker.score(QUERY, [DOCS[1]])[0], abs=1e-6)
    # N:N pairs, and the vLLM field names text_1 / text_2
    r = client.post("/score", json={"text_1": ["a", "b"], "text_2": ["doc a", "doc b"]})
    assert [x["score"] for x in r.json()["data"]] == pytest.approx(
        tiny_reranker.score_pairs([("a", "doc a"), ("b", "doc b")]), abs=1e-6
    )


def post_json(client, route: str, payload: dict):
    """POST `payload` as json.dumps writes it (ASCII escapes: a lone surrogate goes as JSON's "\\ud800", which
    httpx's own json= encoding cannot send)."""
    return client.post(route, content=json.dumps(payload), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"query": QUERY, "documents": []}, 400, "documents"),
        ({"query": QUERY, "documents": "not a list"}, 400, "documents"),
        ({"query": QUERY, "documents": ["ok", 5]}, 400, "documents.1"),
        ({"query": QUERY, "documents": [{"text": 5}]}, 400, "documents.0.text"),
        # neither text nor title (a typo, another library's schema): named, never scored as an empty document
        ({"query": QUERY, "documents": [{"titel": "x"}]}, 400, "documents.0"),
        ({"query": 42, "documents": ["a"]}, 400, "query"),
        ({"documents": ["a"]}, 400, "query"),
        ({"query": QUERY, "documents": ["a"], "top_n": -1}, 400, "top_n"),
        ({"query": QUERY, "documents": ["a"], "top_n": "3"}, 400, "top_n"),
        ({"query": QUERY, "documents": ["a"], "instruction": ["x"]}, 400, "instruction"),
        ({"query": QUERY, "documents": ["d"] * 9}, 413, "documents"),
        ({"model": "other-model", "query": QUERY, "documents": ["a"]}, 404, "model"),
        ({"query": "word " * 9000, "documents": ["a"]}, 400, "query"),  # query over the token budget
        # a lone surrogate (JSON allows the escape "\ud800"; no tokenizer takes it): the text that holds it
        ({"query": QUERY, "documents": ["ok", "bad \ud800"]}, 400, "documents.1"),
        ({"query": QUERY, "documents": [{"title": "t \udc00", "text": "x"}]}, 400, "documents.0"),
        ({"query": "q \ud800", "documents": ["a"]}, 400, "query"),
        ({"query": QUERY, "documents": ["a"], "instruction": "i \udfff"}, 400, "instruction"),
        # a blank query ranks the documents against nothing (tuner data check calls it an error in a file too)
        ({"query": "", "documents": ["a"]}, 400, "query"),
        ({"query": " \n", "documents": ["a"]}, 400, "query"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(client, payload, status, field):
    r = post_json(client, "/v1/rerank", payload)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and field.split(".")[0] in error["message"]


def test_malformed_json_and_score_errors(client):
    r = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    assert "Content-Type" not in r.json()["error"]["message"]
    # where the JSON broke, as line and column, and why
    broken = b'{"query": "q",\n "documents": ["a",]}'
    r = client.post("/v1/rerank", content=broken, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "body: invalid JSON (Expecting value) at line 2 column 20"
    r = client.post("/v1/rerank", content=b'{"query": "q\xff"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "must be JSON text in UTF-8" in r.json()["error"]["message"]
    body = json.dumps({"query": QUERY, "documents": ["a"]}).encode()
    r = client.post("/v1/rerank", content=body, headers={"content-type": "text/plain"})  # curl -d without -H
    assert r.status_code == 400 and "Content-Type: application/json; got 'text/plain'" in r.json()["error"]["message"]
    r = client.post("/score", json={"queries": ["a", "b", "c"], "documents": ["x", "y"]})
    assert r.status_code == 400 and r.json()["error"]["field"] == "queries"
    r = client.post("/score", json={"queries": "a", "documents": []})
    assert r.status_code == 400 and r.json()["error"]["field"] == "documents"


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"text_1": ["a", "b", "c"], "text_2": ["x", "y"]}, 400, "text_1"),
        ({"text_1": [], "text_2": ["x"]}, 400, "text_1"),
        ({"text_1": "a", "text_2": []}, 400, "text_2"),
        ({"text_1": "a", "text_2": ["d"] * 9}, 413, "text_2"),
        ({"text_1": 3, "text_2": ["x"]}, 400, "text_1"),
        ({"text_1": "a", "text_2": ["ok", 5]}, 400, "text_2.1"),
        ({"text_1": "word " * 9000, "text_2": ["a"]}, 400, "text_1"),  # over the token budget
        ({"queries": "word " * 9000, "documents": ["a"]}, 400, "queries"),
        ({"text_2": ["x"]}, 400, "queries"),  # missing: the canonical name, and the message gives the vLLM one
        ({"queries": ["a", "word " * 9000], "documents": ["x", "y"]}, 400, "queries.1"),
        ({"text_1": ["a", "b \ud800"], "text_2": ["x", "y"]}, 400, "text_1.1"),
        ({"text_1": "a", "text_2": "x \ud800"}, 400, "text_2"),
        ({"text_1": "a", "text_2": ["x", "y \ud800"]}, 400, "text_2.1"),
        ({"text_1": "", "text_2": ["x"]}, 400, "text_1"),
        ({"queries": ["a", " "], "documents": ["x", "y"]}, 400, "queries.1"),
        # both names of one field: which one counts would be a guess
        ({"queries": "a", "text_1": "b", "documents": ["x"]}, 400, "queries"),
        ({"queries": "a", "documents": ["x"], "text_2": ["y"]}, 400, "documents"),
    ],
)
def test_score_errors_name_the_field_as_the_client_sent_it(client, payload, status, field):
    """/score accepts queries/documents and vLLM's text_1/text_2; an error names the one in the request."""
    r = post_json(client, "/score", payload)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and error["message"].startswith(field + ":")
    if "text_1" not in payload and "queries" not in payload:
        assert "text_1" in error["message"]


def test_unknown_fields_are_named_not_silently_dropped(client, tiny_reranker, caplog):
    """Other clients' fields are accepted (Cohere's priority ...), but a typo does not pass unseen: the
    response names every ignored field and the log says it once, with the known field it is close to."""
    caplog.set_level("WARNING", logger="tuner.serve")
    docs = [{"text": "Bananas are rich in potassium.", "titel": "Fruit"}, "Jet engines burn fuel."]
    payload = {"query": QUERY, "documents": docs, "instrution": "Find fruit", "priority": 3}
    r = client.post("/v1/rerank", json=payload)
    assert r.status_code == 200, r.text
    assert r.headers["x-ignored-fields"] == "instrution, priority, documents.N.titel"
    # scored as if the unknown fields were absent (no instruction, no title); a document object is echoed back as
    # it was sent (Cohere's v1 API does: clients read their own ids from it)
    plain = tiny_reranker.score(QUERY, [docs[0]["text"], docs[1]])
    assert {x["index"]: x["relevance_score"] for x in r.json()["results"]} == pytest.approx(dict(enumerate(plain)))
    echoed = {x["index"]: x["document"] for x in r.json()["results"]}
    assert echoed[0] == docs[0] and echoed[1] == {"text": docs[1]}
    warnings = [x.getMessage() for x in caplog.records if "ignored unknown" in x.getMessage()]
    assert len(warnings) == 1 and "'instrution' (did you mean 'instruction'?)" in warnings[0]
    assert "'documents.N.titel' (did you mean 'documents.N.title'?)" in warnings[0]
    assert "'priority'," in warnings[0] and "priority' (did" not in warnings[0]
    client.post("/v1/rerank", json=payload)  # the same names again: no second warning
    assert len([x for x in caplog.records if "ignored unknown" in x.getMessage()]) == 1
    r = client.post("/score", json={"text_1": QUERY, "text_2": {"text": "x", "titl": "t"}, "top_n": 1})
    assert r.status_code == 200 and r.headers["x-ignored-fields"] == "top_n, text_2.titl"
    assert "x-ignored-fields" not in client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"]}).headers


def test_a_score_field_under_both_names_is_refused_not_logged_as_ignored(client, caplog):
    """queries and text_1 together are a 400; the log said the second was an ignored unknown field ("'text_1'
    (did you mean 'text_1'?)") first, though it was refused, not ignored."""
    caplog.set_level("WARNING", logger="tuner.serve")
    r = client.post("/score", json={"queries": "a", "text_1": "b", "documents": ["x"]})
    assert r.status_code == 400 and "sent as both queries and text_1" in r.json()["error"]["message"], r.text
    assert not [x for x in caplog.records if "ignored unknown" in x.getMessage()]


def test_unknown_field_names_any_text_still_get_their_header(client, tiny_reranker):
    """A field name is the client's text: non-latin-1 letters, a newline or a very long name still give a 200
    whose X-Ignored-Fields header is legal (they failed the response with a 500, or dropped the connection)."""
    payload = {"query": QUERY, "documents": [{"text": "a", "日本": 1}, "b"], "a\nSet-Cookie: x=1": 1, "x\x7f": 2}
    payload["y" * 500] = 3
    r = client.post("/v1/rerank", json=payload)
    assert r.status_code == 200, r.text
    header = r.headers["x-ignored-fields"]
    assert header == "a\\nSet-Cookie: x=1, x\\u007f, " + "y" * 80 + "..., documents.N.\\u65e5\\u672c"
    assert "set-cookie" not in r.headers
    plain = tiny_reranker.score(QUERY, ["a", "b"])
    assert {x["index"]: x["relevance_score"] for x in r.json()["results"]} == pytest.approx(dict(enumerate(plain)))


def test_unknown_route_and_wrong_method_get_the_same_error_body(client):
    r = client.post("/v1/reranks", json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/reranks" in r.json()["error"]["message"] and "POST /v1/rerank" in r.json()["error"]["message"]
    r = client.get("/v1/rerank")
    assert r.status_code == 405 and "GET /v1/rerank" in r.json()["error"]["message"]
    assert "POST" in r.headers["allow"]  # the header a 405 must carry survives


def test_a_model_failure_is_a_500_with_a_json_error(tiny_reranker, monkeypatch):
    """An error inside the worker (out of memory, say) is the server's, not the client's: 500, not 400 'query'."""

    def broken(*args, **kwargs):
        raise ValueError("device-side failure")

    app = create_app(tiny_reranker, model_name="tiny")
    monkeypatch.setattr(tiny_reranker, "logits_for_ids", broken)
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(2):  # the same keep-alive connection: it was closed after a 500 ("connection reset")
            r = c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
            assert r.status_code == 500 and "device-side failure" in r.json()["error"]["message"]
            assert r.json()["error"]["type"] == "server_error"


def test_health_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny", "calibration": None}
    head = client.head("/health")  # load balancers' probes (it was a 405)
    assert head.status_code == 200 and head.content == b""
    client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    text = client.get("/metrics").text
    assert 'tuner_requests_total{path="/v1/rerank",code="200"}' in text
    assert "tuner_documents_total" in text and "tuner_batch_rows_bucket" in text
    assert 'tuner_request_duration_seconds_bucket{path="/v1/rerank",le="+Inf"}' in text


def test_v1_models_lists_the_served_name_as_openai_and_vllm_do(client):
    """OpenAI-style clients ask GET /v1/models for the name to send in `model`; the server had no such route."""
    r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == "tiny" and model["object"] == "model" and model["owned_by"] == "tuner"
    assert isinstance(model["created"], int) and abs(model["created"] - time.time()) < 3600
    # the listed id is the one /v1/rerank accepts
    assert client.post("/v1/rerank", json={"model": model["id"], "query": "q", "documents": ["a"]}).status_code == 200
    # and openai.models.retrieve(id) finds it (it was a 404); another name is a 404 naming the one served
    assert client.get("/v1/models/tiny").json() == model
    other = client.get("/v1/models/runs/other")
    assert other.status_code == 404 and "this server serves 'tiny'" in other.json()["error"]["message"]


def test_api_key_is_required_and_checked(tiny_reranker):
    app = create_app(tiny_reranker, model_name="tiny", api_key="s3cret-key")
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        body = {"query": "q", "documents": ["a"]}
        assert c.post("/v1/rerank", json=body).status_code == 401
        wrong = c.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret-kez"})
        assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "authorization"
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/rerank", json=body, headers={"Authorization": "Basic s3cret-key"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/models").status_code == 401
        listed = c.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"})
        assert listed.status_code == 200 and listed.json()["data"][0]["id"] == "tiny"
        assert c.get("/v1/models/tiny").status_code == 401
        assert c.get("/v1/models/tiny", headers={"Authorization": "Bearer s3cret-key"}).json()["id"] == "tiny"
        assert c.get("/health").status_code == 200  # liveness probes need no key
        ok = c.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200
        # the key before the body: an unauthenticated client's body is not parsed (it got a 400 before the 401)
        malformed = c.post("/v1/rerank", content=b'{"query": ', headers={"content-type": "application/json"})
        assert malformed.status_code == 401 and malformed.json()["error"]["field"] == "authorization"
        assert c.post("/score", json={"queries": 5}).status_code == 401
        assert c.get("/v1/rerank").status_code == 401  # a guarded path, whatever the method
        text = c.get("/metrics", headers={"Authorization": "Bearer s3cret-key"}).text
        assert 'tuner_requests_total{path="/v1/rerank",code="401"}' in text  # still counted


def test_concurrent_clients_are_batched_together_with_identical_scores(tiny_reranker):
    app = create_app(tiny_reranker, model_name="tiny", max_documents=64, max_batch_tokens=4096)
    words = ["wing", "lift", "drag", "engine", "fuel", "protein", "cell", "gene", "ocean", "graph", "proof"]
    requests = []
    for n in range(16):  # 16 distinct requests, each sent many times by different clients
        docs = [" ".join(words[(n + k + j) % len(words)] for j in range(3 + (k * n) % 9)) for k in range(2 + n % 7)]
        requests.append((f"query {n} about {words[n % len(words)]}", docs))
    expected = [tiny_reranker.score(q, docs) for q, docs in requests]
    total, clients = 320, 32

    async def run(url: str) -> list[tuple[int, list[float]]]:
        out: list[tuple[int, list[float]]] = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:

            async def worker(w: int) -> None:
                for i in range(w, total, clients):
                    k = i % len(requests)
                    q, docs = requests[k]
                    r = await c.post("/v1/rerank", json={"query": q, "documents": docs, "return_documents": False})
                    assert r.status_code == 200, r.text
                    scores = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
                    out.append((k, [scores[j] for j in range(len(docs))]))

            await asyncio.gather(*(worker(w) for w in range(clients)))
        return out

    with running(app) as (url, _, _):
        results = asyncio.run(run(url))
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert len(results) == total
    worst = max(abs(a - b) for k, got in results for a, b in zip(got, expected[k], strict=True))
    assert worst < 1e-5  # the same score whichever requests shared the forward pass
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line[:1] != "#"}
    forward = values["tuner_forward_passes_total"]
    shared = values['tuner_batch_requests_bucket{le="1"}']  # forward passes that held one request only
    assert forward < total  # documents of concurrent requests shared forward passes
    assert shared < forward  # the others held documents of several requests


@pytest.mark.parametrize("packing", [False, True])
def test_a_drain_is_one_scoring_call_with_prefix_groups_across_requests(tiny_model_dir, monkeypatch, packing):
    """The worker scores everything pending in one `logits_for_ids` call (one wait for the device), so prefix
    reuse and packing apply as offline: requests with the same query and instruction share one prefix forward,
    a different instruction gets its own, and the scores are the plain path's. Metrics count each forward pass."""
    from tuner.scoring import Reranker
    from tuner.serve import Batcher
    from tuner.serve_metrics import Metrics

    plain = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    fast = Reranker(plain.model, plain.tokenizer, prefix_reuse=True, packing=packing)
    jobs = [  # (query, documents, instruction); 0 and 2 share query and instruction, 3 differs from 0 only by it
        ("what produces lift on a wing?", DOCS[:3], None),
        ("which fruit has potassium?", DOCS[1:4], None),
        ("what produces lift on a wing?", DOCS[3:], None),
        ("what produces lift on a wing?", DOCS[:2], "Find passages about aerodynamics"),
    ]
    triples = [[(q, d, inst) for d in docs] for q, docs, inst in jobs]
    expected = [plain.logits_for_ids(plain.encode(t)) for t in triples]
    calls, prefixes = [], []
    original_call, original_prefix = fast.logits_for_ids, Reranker._logits_shared_prefix

    def count_calls(*args, **kwargs):
        calls.append(len(args[0]))
        return original_call(*args, **kwargs)

    def spy(self, prefix, rests, batch_tokens):
        prefixes.append(len(rests))
        return original_prefix(self, prefix, rests, batch_tokens)

    monkeypatch.setattr(fast, "logits_for_ids", count_calls)
    monkeypatch.setattr(Reranker, "_logits_shared_prefix", spy)
    metrics = Metrics()
    batcher = Batcher(fast, max_batch_tokens=256, metrics=metrics)  # a small budget: several forward passes
    futures = [batcher.submit(fast.encode(t), [(q, i) for q, _, i in t]) for t in triples]
    unkeyed = batcher.submit(fast.encode(triples[1]))  # no keys: scored, just not on the prefix path
    batcher.start()  # everything is pending: one drain
    results = [f.result(timeout=60) for f in futures]
    assert unkeyed.result(timeout=60)[0] == pytest.approx(expected[1], abs=1e-5)
    batcher.stop()
    assert calls == [sum(len(t) for t in triples) + len(triples[1])]
    assert sorted(prefixes) == [2, 3, 5]  # jobs 0+2 together (3 + 2 documents), job 1, job 3
    for (logits, tokens), want, t in zip(results, expected, triples, strict=True):
        assert logits == pytest.approx(want, abs=1e-5)
        assert tokens == sum(len(x) for x in fast.encode(t))
    assert metrics.forward_passes >= 4 and metrics.batch_rows.n == metrics.forward_passes
    assert metrics.batch_rows.total == sum(len(t) for t in triples) + len(triples[1])
    # requests per forward pass, not rows: only jobs 0 and 2 share passes (their prefix group), so none holds more
    # than 2 requests, while job 1's 3 documents share one pass
    assert sum(metrics.batch_requests.counts[2:]) == 0 and metrics.batch_requests.total < metrics.batch_rows.total


def test_a_served_request_reaches_the_prefix_path_with_its_keys(tiny_reranker, monkeypatch):
    """The route hands its prompts' (query, instruction) keys to the batcher: with prefix reuse on, a request's
    documents share one prefix forward (the batcher's own test submits keys itself)."""
    from tuner.scoring import Reranker

    fast = Reranker(tiny_reranker.model, tiny_reranker.tokenizer, prefix_reuse=True)
    prefixes = []
    original = Reranker._logits_shared_prefix

    def spy(self, prefix, rests, batch_tokens):
        prefixes.append(len(rests))
        return original(self, prefix, rests, batch_tokens)

    monkeypatch.setattr(Reranker, "_logits_shared_prefix", spy)
    with running(create_app(fast, model_name="tiny")) as (url, _, _):
        r = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS[:3]}, timeout=30)
    assert r.status_code == 200 and prefixes == [3]


def test_shutdown_lets_in_flight_requests_finish(tiny_model_dir):
    from tuner.scoring import Reranker

    slow = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    original = slow.logits_for_ids

    def slow_logits(ids, batch_tokens=None, **kwargs):
        time.sleep(1.0)  # a long forward pass, so the request is in flight when shutdown starts
        return original(ids, batch_tokens, **kwargs)

    slow.logits_for_ids = slow_logits
    app = create_app(slow, model_name="tiny")
    with running(app) as (url, server, thread):
        result: dict = {}

        def call() -> None:
            result["response"] = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.4)
        server.should_exit = True  # what SIGTERM does
        caller.join(30)
        thread.join(30)
        assert not thread.is_alive()
    assert result["response"].status_code == 200
    expected = slow._normalize(original(slow.encode([("q", "a", None)]))[0])
    assert result["response"].json()["results"][0]["relevance_score"] == pytest.approx(expected, abs=1e-6)


def test_export_and_serve_import_no_training_only_packages():
    import ast
    from pathlib import Path

    import tuner

    forbidden = {"trl", "datasets", "wandb", "bitsandbytes", "sentence_transformers"}
    package = Path(tuner.__file__).parent
    for name in ("export.py", "export_card.py", "chat_template.py", "serve.py", "serve_metrics.py", "serve_vllm.py"):
        tree = ast.parse((package / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{name} imports {roots & forbidden}"


def test_cli_serve_passes_its_options_to_the_reranker(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """`tuner serve --compile --no-calibration --max-length N`: the served Reranker has compiled layers (warmed up
    before the port opens), no calibration although tuner.json has one, and that budget; uvicorn is stubbed out."""
    import json
    import shutil

    import uvicorn

    from tuner import serve as serve_mod
    from tuner.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "tuner.json").write_text(json.dumps({"max_length": 200, "calibration": {"temperature": 2.0, "bias": 0}}))
    seen = {}
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self: seen.update(ran=True, graceful=self.config.timeout_graceful_shutdown)
    )
    monkeypatch.setattr(serve_mod, "warm_up", lambda reranker: seen.setdefault("warmed", reranker))
    create_app = serve_mod.create_app

    def spy(reranker, **kwargs):
        seen["served"], seen["options"] = reranker, kwargs
        return create_app(reranker, **kwargs)

    monkeypatch.setattr(serve_mod, "create_app", spy)
    argv = ["serve", str(model), "--compile", "--no-calibration", "--max-length", "300", "--device", "cpu"]
    limits = "--max-documents 7 --max-queued-documents 9 --max-request-mb 2 --max-batch-tokens 500".split()
    assert main([*argv, "--graceful-timeout", "12.5", *limits, "--model-name", "served-as"]) == 0
    assert seen["graceful"] == 12.5  # uvicorn's graceful-shutdown timeout (25 s without the flag, below)
    options = {"max_documents": 7, "max_queued_documents": 9, "max_request_bytes": 2 * 2**20, "max_batch_tokens": 500}
    assert {k: seen["options"][k] for k in options} == options and seen["options"]["model_name"] == "served-as"
    reranker = seen["warmed"]
    assert seen["served"] is reranker
    assert seen["ran"] and reranker.calibration is None and reranker.encoder.max_length == 300
    assert all(layer._compiled_call_impl is not None for layer in reranker.model.model.layers)
    # without the options: tuner.json's budget and calibration, eager layers, no warm-up
    seen.clear()
    assert main(["serve", str(model), "--device", "cpu"]) == 0
    assert "warmed" not in seen and seen["graceful"] == 25.0
    reranker = seen["served"]
    assert reranker.calibration == {"temperature": 2.0, "bias": 0} and reranker.encoder.max_length == 200
    assert all(layer._compiled_call_impl is None for layer in reranker.model.model.layers)
    assert reranker.prefix_reuse is False and reranker.packing is False
    assert reranker.model.config._attn_implementation == "sdpa"
    # the fast paths: prefix reuse, packing and the attention kernel reach the served Reranker; vLLM refuses them
    seen.clear()
    fast = ["--prefix-reuse", "auto", "--packing", "--attn-implementation", "flex_attention"]
    assert main(["serve", str(model), "--device", "cpu", *fast]) == 0
    assert seen["served"].prefix_reuse == "auto" and seen["served"].packing is True
    assert seen["served"].model.config._attn_implementation == "flex_attention"
    assert main(["serve", str(model), "--engine", "vllm", "--prefix-reuse", "on"]) == 2
    assert main(["serve", str(model), "--engine", "vllm", "--attn-implementation", "eager"]) == 2
    # bound to every interface with no key: said before it serves (not on loopback, not with a key)
    everywhere = ["serve", str(model), "--device", "cpu", "--host", "0.0.0.0", "--port", "0"]
    monkeypatch.setenv("TUNER_TEST_KEY", "k")
    with caplog.at_level(logging.WARNING, logger="tuner.serve"):
        assert main(everywhere) == 0
        assert main(["serve", str(model), "--device", "cpu", "--port", "0"]) == 0
        assert main([*everywhere, "--api-key-env", "TUNER_TEST_KEY"]) == 0
    said = [r.getMessage() for r in caplog.records if "with no API key" in r.getMessage()]
    assert said == ["listening on 0.0.0.0:0 with no API key: anyone who can reach this port can use the model and "
                    "its compute (--api-key-env VAR, or --host 127.0.0.1 behind a proxy)"]  # fmt: skip


def test_a_taken_port_is_named_before_the_model_loads(tmp_path):
    from tuner.serve import serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=rf"--port {port} on 127.0.0.1: Address already in use; choose another"):
            serve(tmp_path / "no-model-here", port=port)  # the model would fail second: the port is checked first


def test_an_api_key_read_with_a_trailing_newline_still_matches(tiny_reranker, monkeypatch):
    """A key from a secret file or `kubectl create secret --from-file` ends in a newline; the server stripped the
    client's token but not its own key, so every request got 401. A blank key is refused, never "no key"."""
    from tuner.cli import main

    app = create_app(tiny_reranker, model_name="tiny", api_key="s3cret-key\n")
    with running(app) as (url, _, _), httpx.Client(base_url=url, timeout=30) as c:
        body = {"query": "q", "documents": ["a"]}
        assert c.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 401
    with pytest.raises(ValueError, match="blank"):
        create_app(tiny_reranker, api_key=" \n")
    monkeypatch.setenv("TUNER_TEST_KEY", " \n")
    assert main(["serve", "no-model-here", "--api-key-env", "TUNER_TEST_KEY"]) == 2  # before any model loads


def test_a_missing_score_field_names_its_vllm_name_on_v1_score_too(client):
    """vLLM's clients post to /v1/score with text_1 / text_2; a missing one was named with its vLLM name only on
    /score, so a vLLM client that sent data_1 / data_2 read "queries: Field required" alone."""
    for path in ("/score", "/v1/score"):
        r = client.post(path, json={"data_1": "q", "data_2": ["x"]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == "queries: Field required (or its vLLM name text_1)", path


def test_cohere_rank_fields_pick_title_or_text_and_other_fields_are_refused(client, tiny_reranker):
    """Cohere v1's rank_fields was ignored: {"title", "body"} documents with rank_fields ["title", "body"] were
    ranked on their titles alone, with only a response header to say so. rank_fields now picks a document's title
    and/or text; a field tuner cannot rank on is a 400 naming it. Document objects come back with their ids."""
    docs = [
        {"id": 7, "title": "Fruit", "text": "Bananas are rich in potassium."},
        {"id": 8, "title": "Jets", "text": "x"},
    ]
    for fields, scored in (
        (["text"], ["Bananas are rich in potassium.", "x"]),
        (["title"], [{"title": "Fruit"}, {"title": "Jets"}]),  # a title alone, read as the scorer reads it
        (["title", "text"], docs),
    ):
        r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": fields})
        assert r.status_code == 200 and r.headers["x-ignored-fields"] == "documents.N.id", r.text  # not scored
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        want = tiny_reranker.score(
            QUERY, [{k: v for k, v in d.items() if k != "id"} if isinstance(d, dict) else d for d in scored]
        )
        assert got == pytest.approx(dict(enumerate(want)), rel=1e-5), fields
        assert {x["index"]: x["document"]["id"] for x in r.json()["results"]} == {0: 7, 1: 8}
    # a document with none of them is named, not scored as an empty document
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": ["a", {"title": "Jets"}], "rank_fields": ["text"]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "documents.1: a document object has none of the rank_fields ('text')"
    body = [{"title": "Fruit", "body": "Bananas."}]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": body, "rank_fields": ["title", "body"]})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("rank_fields: 'body': a document object is ranked on its 'title'")


def test_a_document_of_the_wrong_type_is_named_with_what_a_document_may_be(client):
    """`documents: [1, 2]` got "documents.0: Input should be a valid string", which hid that objects are taken."""
    cases = [
        ("/v1/rerank", {"query": QUERY, "documents": ["a", 2]}, "documents.1", "a number (2)"),
        ("/v1/rerank", {"query": QUERY, "documents": [None]}, "documents.0", "null"),
        ("/v1/rerank", {"query": QUERY, "documents": [["a"]]}, "documents.0", "an array"),
        ("/score", {"text_1": QUERY, "text_2": [True]}, "text_2.0", "a boolean (true)"),
    ]
    for path, payload, where, kind in cases:
        r = client.post(path, json=payload)
        assert r.status_code == 400
        assert (
            r.json()["error"]["message"]
            == f'{where}: a document is a string or a {{"text", "title"}} object, not {kind}'
        )


def test_the_openapi_schema_builds_without_a_warning(client):
    """/openapi.json (what /docs reads) builds with one operation id per route: a route answering GET and HEAD gave
    FastAPI's "Duplicate Operation ID" warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = client.get("/openapi.json").json()
    assert "get" in schema["paths"]["/health"] and "/v1/rerank" in schema["paths"]


def test_use_activation_false_gives_the_raw_logits_as_vllm_does(client, tiny_reranker):
    """vLLM's `use_activation` (older vLLM: `activation`) false asks for the raw score: the yes−no logits, on
    /v1/rerank and /score alike, in the same order; it was ignored (named in X-Ignored-Fields)."""
    docs = ["alpha beta", "gamma delta epsilon", "zeta"]
    logits = tiny_reranker.score("q", docs, normalize=False)
    probs = tiny_reranker.score("q", docs)
    for field in ("use_activation", "activation"):
        r = client.post("/v1/rerank", json={"query": "q", "documents": docs, field: False})
        assert r.status_code == 200 and "x-ignored-fields" not in r.headers
        got = {row["index"]: row["relevance_score"] for row in r.json()["results"]}
        assert got == pytest.approx(dict(enumerate(logits)), abs=1e-5)
        assert [row["index"] for row in r.json()["results"]] == sorted(range(3), key=lambda i: -logits[i])
        s = client.post("/score", json={"queries": "q", "documents": docs, field: False})
        assert [row["score"] for row in s.json()["data"]] == pytest.approx(logits, abs=1e-5)
    on = client.post("/score", json={"queries": "q", "documents": docs, "use_activation": True}).json()
    assert [row["score"] for row in on["data"]] == pytest.approx(probs, abs=1e-6)


def test_a_request_whose_scores_are_not_finite_gets_a_500_naming_them_and_the_others_are_answered(tiny_reranker):
    """A NaN score (NaN weights, float16 overflow) is not JSON: the response failed to encode. Now that request
    alone gets a JSON 500 naming the pair (the check is per request, so the others of its drain are answered), and
    the server goes on scoring."""

    class NaNForQueryB:
        def __getattr__(self, name):
            return getattr(tiny_reranker, name)

        def logits_for_ids(self, ids, batch_tokens=None, groups=None, on_batch=None):
            marker = tiny_reranker.encoder.tokenizer.encode(" B", add_special_tokens=False)[0]
            return [math.nan if marker in x else 1.0 for x in ids]

    with running(create_app(NaNForQueryB(), model_name="tiny")) as (url, _, _), httpx.Client(base_url=url) as c:
        bad = c.post("/v1/rerank", json={"query": "query B", "documents": ["a", "b"]})
        good = c.post("/v1/rerank", json={"query": "query A", "documents": ["a", "b"]})
    assert bad.status_code == 500 and bad.json()["error"]["type"] == "server_error"
    assert "2 of 2 scores are not finite (pair 0 of the request: nan)" in bad.json()["error"]["message"]
    assert (
        good.status_code == 200
        and [x["relevance_score"] for x in good.json()["results"]] == [pytest.approx(1 / (1 + math.exp(-1.0)))] * 2
    )
