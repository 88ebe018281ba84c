"""HTTP reranking API over a tuner export: `POST /v1/rerank` (`/rerank`), `POST /score`, `GET /health`, `GET /metrics`.

Requests are scored by one worker thread that owns the model. While it runs a forward pass, new requests queue up;
it then takes everything pending, tokenizes it, length-sorts all the documents together and cuts them into
token-budget batches, so documents of concurrent requests share forward passes (never one forward per request).
The event loop only validates, waits on a future and formats the answer.

Imports torch (through scoring), FastAPI, pydantic and uvicorn only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import hmac
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuner.contract import PromptTextError
from tuner.scoring import Reranker, prefix_groups
from tuner.serve_metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_MAX_DOCUMENTS = 1000
# A drain takes at most this many pairs, so that one burst cannot delay the requests behind it without bound.
MAX_PAIRS_PER_DRAIN = 4096
_FIELDS = {"model", "query", "queries", "documents", "top_n", "instruction", "return_documents", "text", "title"}
_SCORE_ALIASES = {"queries": "text_1", "documents": "text_2"}  # /score's vLLM names
_FIELDS |= set(_SCORE_ALIASES.values())


class ApiError(Exception):
    """A client error: HTTP status, message and the request field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


# ------------------------------------------------------------------------------------------- schemas
class DocumentObject(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept only to be named: see _unknown_fields
    text: StrictStr
    title: StrictStr | None = None


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept only to be named: see _unknown_fields
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: StrictInt | None = Field(default=None, ge=0)  # 0 or absent: every document (as vLLM reads 0)
    instruction: StrictStr | None = None
    return_documents: StrictBool = True


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept only to be named: see _unknown_fields
    model: StrictStr | None = None
    queries: StrictStr | list[StrictStr] = Field(validation_alias=AliasChoices("queries", "text_1"))
    documents: StrictStr | DocumentObject | list[StrictStr | DocumentObject] = Field(
        validation_alias=AliasChoices("documents", "text_2")
    )
    instruction: StrictStr | None = None
    # the names the client used (queries or text_1, documents or text_2): errors name the field as it was sent
    _queries_name: str = PrivateAttr("queries")
    _documents_name: str = PrivateAttr("documents")
    _both_names: list[str] = PrivateAttr(default_factory=list)  # sent under both names: refused by the route

    @model_validator(mode="wrap")
    @classmethod
    def _remember_names(cls, data: Any, handler):
        request = handler(data)
        if isinstance(data, dict):
            request._queries_name = "queries" if "queries" in data else "text_1"
            request._documents_name = "documents" if "documents" in data else "text_2"
            request._both_names = [ours for ours, vllm in _SCORE_ALIASES.items() if ours in data and vllm in data]
        return request


def _unknown_fields(body: RerankRequest | ScoreRequest) -> dict[str, str | None]:
    """The request's fields this server does not know, as the client named them, each with a close known name.

    They are accepted, as vLLM and the hosted rerank APIs accept the fields of each other's clients (Cohere's
    `rank_fields`, `max_chunks_per_doc` ...), but never silently: a typo such as `instrution` would otherwise
    score without the instruction the client meant. The server logs each name once and every response that
    ignored something says so in its `X-Ignored-Fields` header. Returns {field: the known field it is close to}.
    """
    found: dict[str, str | None] = {}

    def note(model: BaseModel, prefix: str) -> None:
        known = set(type(model).model_fields)
        if isinstance(model, ScoreRequest):
            known |= set(_SCORE_ALIASES.values())
        for name in model.model_extra or {}:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            found[prefix + name] = prefix + close[0] if close else None

    note(body, "")
    documents = body.documents
    many = isinstance(documents, list)
    name = getattr(body, "_documents_name", "documents")
    for doc in documents if many else [documents]:
        if isinstance(doc, DocumentObject):
            note(doc, f"{name}.N." if many else f"{name}.")
    return found


def _doc_dict(doc: DocumentObject) -> dict[str, str]:
    """The document's known fields (its unknown ones are kept on the model only to be named)."""
    return doc.model_dump(include=set(DocumentObject.model_fields), exclude_none=True)


# ------------------------------------------------------------------------------------------- batcher
@dataclass
class _Job:
    ids: list[list[int]]  # the request's encoded prompts (`Reranker.encode`)
    # per prompt, what decides its shared head (query, instruction): prompts of one drain with the same key form
    # one prefix-reuse group, across requests too (None: no groups)
    keys: list[Any] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One worker thread that scores the pending requests of all clients together, by token budget."""

    def __init__(self, reranker: Reranker, max_batch_tokens: int | None = None, metrics: Metrics | None = None):
        self.reranker = reranker
        self.max_batch_tokens = max_batch_tokens or reranker.batch_tokens
        self.metrics = metrics or Metrics()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="tuner-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Finish the queued work, then end the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(self, ids: list[list[int]], keys: list[Any] | None = None) -> concurrent.futures.Future:
        """Queue one request's encoded prompts (`Reranker.encode`); the future gives (logits, prompt_tokens).

        `keys`: one hashable per prompt, equal for prompts that share their query and instruction (the
        reranker's prefix reuse groups them, also across the requests of one drain).

        Requests are encoded in their own threads before they get here, so tokenizing the next requests overlaps
        the forward pass of the current batch: this worker only runs the model.
        """
        if keys is not None and len(keys) != len(ids):
            raise ValueError(f"{len(keys)} keys for {len(ids)} prompts")
        job = _Job(ids, keys)
        self._queue.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, pairs, stop = [job], len(job.ids), False
            while pairs < MAX_PAIRS_PER_DRAIN:  # everything that arrived while the last batch ran
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                pairs += len(nxt.ids)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        flat = [ids for job in live for ids in job.ids]
        owner = [n for n, job in enumerate(live) for _ in job.ids]
        groups = None
        if self.reranker.prefix_reuse:  # a job without keys: in no group (scored on the other paths)
            groups = prefix_groups([key for job in live for key in (job.keys or [None] * len(job.ids))])

        def observe(batch) -> None:
            self.metrics.observe_batch(rows=len(batch), requests=len({owner[i] for i in batch}))

        try:
            # the whole drain in one call: every forward pass is queued before the one wait for the device, and
            # prefix reuse / packing apply as they do offline
            logits = self.reranker.logits_for_ids(flat, self.max_batch_tokens, groups=groups, on_batch=observe)
        except Exception as err:
            log.exception("scoring failed")
            for job in live:
                job.future.set_exception(err)
            return
        start = 0
        for job in live:
            n = len(job.ids)
            job.future.set_result((logits[start : start + n], sum(len(x) for x in job.ids)))
            start += n


# ----------------------------------------------------------------------------------------------- app
def _field_of(loc: tuple) -> str:
    parts = [str(x) for x in loc[1:] if isinstance(x, int) or x in _FIELDS]
    return ".".join(parts) or "body"


def create_app(
    reranker: Reranker,
    model_name: str | None = None,
    api_key: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_batch_tokens: int | None = None,
) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the batching worker.

    Args:
        reranker: the loaded model (see `Reranker.from_pretrained`).
        model_name: the name requests may give in `model` (default: the reranker's name's last part).
        api_key: if set, every route but `/health` needs `Authorization: Bearer <api_key>`.
        max_documents: documents per request; more get 413.
        max_batch_tokens: padded tokens per forward pass (default: the reranker's).
    """
    name = model_name or Path(str(reranker.name)).name or "tuner-reranker"
    metrics = Metrics()
    batcher = Batcher(reranker, max_batch_tokens, metrics)
    key = api_key.encode("utf-8") if api_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; the queue is empty or finishes here
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="tuner reranker", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        body = {"error": {"message": err.message, "type": "invalid_request_error", "field": err.field}}
        return JSONResponse(body, status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        # the deepest error is the most specific: for a document object without "text" that is
        # documents.N.text (missing), not the str branch of the union ("documents.N: a valid string")
        first = max(err.errors(), key=lambda e: len(e.get("loc", ())))
        invalid_json = first.get("type") == "json_invalid"  # its loc is a character offset, not a field
        where = "body" if invalid_json else _field_of(tuple(first.get("loc", ())))
        message = f"{where}: {first.get('msg', 'invalid value')}"
        if first.get("type") == "missing" and request.url.path == "/score" and where in _SCORE_ALIASES:
            message += f" (or its vLLM name {_SCORE_ALIASES[where]})"
        content_type = request.headers.get("content-type", "")
        if where == "body" and not content_type.startswith("application/json"):
            # FastAPI reads a body it was not told is JSON as bytes: "Input should be a valid dictionary"
            message += f" (the body must be JSON, sent with Content-Type: application/json; got {content_type!r})"
        body = {"error": {"message": message, "type": "invalid_request_error", "field": where}}
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        # unknown route (404), wrong method (405): the same error body as every other error, not {"detail": ...}
        message = f"{request.method} {request.url.path}: {err.detail}"
        if err.status_code == 404:
            message += " (routes: POST /v1/rerank, /rerank, /score; GET /health, /metrics)"
        body = {"error": {"message": message, "type": "invalid_request_error"}}
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, err: Exception):
        log.error("request failed: %s: %s", type(err).__name__, err)
        body = {"error": {"message": f"scoring failed: {type(err).__name__}: {err}", "type": "server_error"}}
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        start = time.perf_counter()
        metrics.inflight(+1)
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.inflight(-1)
            metrics.observe_request(request.url.path, status, time.perf_counter() - start)

    async def authorize(request: Request) -> None:
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest takes constant time in the length of the expected key: no timing oracle
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), key):
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)", "authorization")

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise ApiError(404, f"model {requested!r} is not served here; this server serves {name!r}", "model")

    def check_documents(documents: list, field: str = "documents") -> None:
        if not documents:
            raise ApiError(400, f"{field}: at least one document is required", field)
        if len(documents) > max_documents:
            message = f"{field}: {len(documents)} documents, over the limit of {max_documents}"
            raise ApiError(413, message, field)

    def check_query(query: str, field: str) -> None:
        if not query.strip():  # documents may be blank (a corpus has empty ones); a query ranks against nothing
            raise ApiError(400, f"{field}: empty; a query is needed to rank the documents against", field)

    async def score(
        triples: list[tuple[str, Any, str | None]], field_of: Callable[[str, int], str]
    ) -> tuple[list[float], int]:
        """`field_of(part, n)`: the request field of pair n's "query", "document" or "instruction" (for errors)."""
        try:
            # tokenized here, off the event loop and beside the worker's forward pass (the Rust tokenizer
            # releases the GIL); a query over the token budget fails this request alone
            ids = await asyncio.to_thread(reranker.encode, triples)
        except PromptTextError as err:
            where = field_of(err.part, err.index)
            raise ApiError(400, f"{where}: {err}", where) from None
        except (ValueError, TypeError) as err:  # any other text the encoder refuses: still this request's fault
            raise ApiError(400, str(err)) from None
        # a failure of the model itself (out of memory ...) is the server's: 500, through the handler below
        keys = [(query, instruction) for query, _, instruction in triples]
        return await asyncio.wrap_future(batcher.submit(ids, keys))

    def doc_value(doc: str | DocumentObject) -> Any:
        return doc if isinstance(doc, str) else _doc_dict(doc)

    warned: set[str] = set()

    def flag_unknown(body: RerankRequest | ScoreRequest, request: Request, response: Response) -> None:
        unknown = _unknown_fields(body)
        if not unknown:
            return
        response.headers["X-Ignored-Fields"] = ", ".join(unknown)
        new = [f for f in unknown if f not in warned]
        if new:  # once per field name, not once per request: a client that always sends one stays quiet after
            warned.update(new)
            said = ", ".join(f"{f!r}" + (f" (did you mean {unknown[f]!r}?)" if unknown[f] else "") for f in new)
            log.warning("%s: ignored unknown request field(s) %s", request.url.path, said)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # the calibration tells a client why these probabilities differ from vLLM's sigmoid(logit) on the same export
        return {"status": "ok", "model": name, "calibration": reranker.calibration}

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def rerank(body: RerankRequest, request: Request, response: Response) -> dict[str, Any]:
        check_model(body.model)
        flag_unknown(body, request, response)
        check_query(body.query, "query")
        check_documents(body.documents)
        docs = [doc_value(d) for d in body.documents]
        fields = {"query": "query", "instruction": "instruction"}
        logits, tokens = await score(
            [(body.query, d, body.instruction) for d in docs], lambda part, n: fields.get(part, f"documents.{n}")
        )
        metrics.add_documents(len(docs))
        scores = [reranker._normalize(x) for x in logits]
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[: body.top_n or None]
        results = []
        for i in order:
            row: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                doc = body.documents[i]
                row["document"] = {"text": doc} if isinstance(doc, str) else _doc_dict(doc)
            results.append(row)
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }

    app.post("/v1/rerank", dependencies=[Depends(authorize)])(rerank)
    app.post("/rerank", dependencies=[Depends(authorize)])(rerank)

    @app.post("/score", dependencies=[Depends(authorize)])
    async def score_route(body: ScoreRequest, request: Request, response: Response) -> dict[str, Any]:
        check_model(body.model)
        flag_unknown(body, request, response)
        queries = [body.queries] if isinstance(body.queries, str) else body.queries
        documents = [body.documents] if isinstance(body.documents, (str, DocumentObject)) else body.documents
        q_field, d_field = body._queries_name, body._documents_name
        for ours in body._both_names:
            vllm = _SCORE_ALIASES[ours]
            raise ApiError(400, f"{ours}: sent as both {ours} and {vllm} (vLLM's name for it); send one", ours)
        check_documents(documents, d_field)
        if not queries:
            raise ApiError(400, f"{q_field}: at least one query is required", q_field)
        for n, query in enumerate(queries):
            check_query(query, q_field if isinstance(body.queries, str) else f"{q_field}.{n}")
        if len(queries) not in (1, len(documents)):
            raise ApiError(
                400,
                f"{q_field}: {len(queries)} queries for {len(documents)} documents (use 1 or one per document)",
                q_field,
            )
        if len(queries) == 1:
            queries = queries * len(documents)
        triples = [(q, doc_value(d), body.instruction) for q, d in zip(queries, documents, strict=True)]

        def field_of(part: str, n: int) -> str:
            if part == "instruction":
                return "instruction"
            if part == "query":
                return q_field if isinstance(body.queries, str) else f"{q_field}.{n}"
            return d_field if isinstance(body.documents, (str, DocumentObject)) else f"{d_field}.{n}"

        logits, tokens = await score(triples, field_of)
        metrics.add_documents(len(triples))
        return {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": name,
            "data": [{"index": i, "object": "score", "score": reranker._normalize(x)} for i, x in enumerate(logits)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_batch_tokens: int | None = None,
    max_length: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    graceful_timeout: float = 30.0,
    calibrated: bool = True,
    compile: bool = False,
    prefix_reuse: bool | str = False,
    packing: bool = False,
    attn_implementation: str | None = None,
) -> None:
    """Load `model` and serve it with uvicorn until SIGINT/SIGTERM (in-flight requests are allowed to finish).

    `max_length` None: the export's `tuner.json` budget, else 8192; `calibrated`: apply its calibration (if any);
    `compile`: compiled decoder layers (`Reranker(compile=True)`), warmed up before the port opens;
    `prefix_reuse`, `packing`, `attn_implementation`: `Reranker`'s fast paths (same scores; prefix groups span the
    requests of a drain; packing pays with flex_attention on a GPU).
    """
    import uvicorn

    check_port_free(host, port)  # in a second, not after the model has loaded
    reranker = Reranker.from_pretrained(
        model,
        device=device,
        dtype=dtype,
        max_length=max_length,
        show_progress=False,
        calibrated=calibrated,
        compile=compile,
        prefix_reuse=prefix_reuse,
        packing=packing,
        attn_implementation=attn_implementation,
    )
    if compile:
        warm_up(reranker)
    app = create_app(
        reranker,
        model_name=model_name or Path(str(model)).expanduser().resolve().name,
        api_key=api_key,
        max_documents=max_documents,
        max_batch_tokens=max_batch_tokens,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_timeout)
    uvicorn.Server(config).run()


def check_port_free(host: str, port: int) -> None:
    """Raise `OSError` naming host and port when the server could not listen there (taken, no permission)."""
    import socket

    if port == 0:  # any free port
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise OSError(f"--host {host!r}: {err.strerror or err}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT port is fine
        try:
            sock.bind(address)
        except OSError as err:
            raise OSError(f"--port {port} on {host}: {err.strerror or err}; choose another --port") from None


def warm_up(reranker: Reranker) -> float:
    """Score two batches of different shapes, so that the compiler has built its dynamic-shape graph before the
    first client waits on it (the first shape compiles a static graph, the second a dynamic one). Returns seconds.
    """
    start = time.perf_counter()
    for rows, words in ((2, 16), (3, 40)):
        reranker.score("warm-up query", [" ".join(["warm-up"] * words)] * rows)
    seconds = time.perf_counter() - start
    log.info("compiled layers warmed up in %.1f s", seconds)
    return seconds
