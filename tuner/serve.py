"""HTTP reranking API over a tuner export: `POST /v1/rerank` (`/rerank`, `/v2/rerank`), `POST /score` (`/v1/score`),
`GET /health`, `GET /metrics`.

Requests are scored by one worker thread that owns the model. While it runs a forward pass, new requests queue up;
it then takes everything pending, tokenizes it, length-sorts all the documents together and cuts them into
token-budget batches, so documents of concurrent requests share forward passes (never one forward per request).
The event loop only validates, waits on a future and formats the answer.

Load is bounded: a request body over `max_request_bytes` gets 413, a request that would take the queue past
`max_queued_documents` gets 503 with Retry-After, and a request whose client has gone (a timeout, a cancelled
search) is dropped from the queue, or stops its drain between forward passes, instead of being scored for nobody.

Imports torch (through scoring), FastAPI, pydantic and uvicorn only.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import difflib
import hmac
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

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
from tuner.scoring import NonFiniteScoresError, Reranker, best_first, check_finite, prefix_groups
from tuner.serve_metrics import Metrics
from tuner.serve_vllm import default_served_name

log = logging.getLogger(__name__)

DEFAULT_MAX_DOCUMENTS = 1000
# Prompts queued or being scored, over all requests: past it a request gets 503 (a client retries elsewhere or later)
# rather than a wait that its own timeout cuts short. 8192 prompts of ~400 tokens are ~40 s of an H100's scoring.
DEFAULT_MAX_QUEUED_DOCUMENTS = 8192
# A request body past this is refused before it is parsed (1000 documents of ~8k tokens fit in it).
DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20
# nginx's status for a request whose client closed the connection first: it is never sent (nobody is there to read
# it), only counted in /metrics.
CLIENT_CLOSED_REQUEST = 499
# A drain (one scoring call) takes at most this many pairs, a large request's in turns with the requests that arrive
# meanwhile: a 1-document request waits for the drain running when it came and one drain per large request ahead of
# it, not for a 5000-document request to end. 1024 prompts of ~400 tokens are still dozens of forward passes per
# wait for the device.
MAX_PAIRS_PER_DRAIN = 1024
_FIELDS = {"model", "query", "queries", "documents", "top_n", "instruction", "return_documents", "text", "title"}
_FIELDS |= {"truncate_prompt_tokens", "max_tokens_per_doc", "rank_fields"}
_SCORE_ALIASES = {"queries": "text_1", "documents": "text_2"}  # /score's vLLM names
_FIELDS |= set(_SCORE_ALIASES.values())


class ApiError(Exception):
    """A client error: HTTP status, message and the request field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class ServerBusy(Exception):
    """The batcher's queue is full: the request is refused (503), not queued."""


class ClientGone(Exception):
    """Every request of a drain was abandoned by its client: the drain stopped between forward passes."""


def error_body(message: str, status: int, field: str | None = None, kind: str = "invalid_request_error") -> dict:
    """The one error shape: vLLM's and OpenAI's `{"error": {message, type, param, code}}`; `field` repeats `param`
    (the name this server used before it followed vLLM's)."""
    error: dict[str, Any] = {"message": message, "type": kind, "param": field, "code": status}
    if field is not None:
        error["field"] = field
    return {"error": error}


# ------------------------------------------------------------------------------------------- schemas
class DocumentObject(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept to be named (see _unknown_fields) and echoed back by rerank
    # the shapes tuner.contract.document_text reads, which the Python API takes: a title alone is a document (its
    # text ""); neither field is an error there, and here, rather than a silently empty document
    text: StrictStr = ""
    title: StrictStr | None = None

    @model_validator(mode="after")
    def _text_or_title(self) -> DocumentObject:
        if not {"text", "title"} & self.model_fields_set:
            keys = ", ".join(repr(k) for k in self.model_extra or {}) or "(none)"
            raise ValueError(f"a document object needs 'text' (or 'title'); got keys {keys}")
        return self


# vLLM's switch for the score activation (older vLLM: "activation") of /rerank and /score: false gives the raw yes−no
# logit, as Reranker's normalize=False (no calibration either); absent, null or true: the probability
UseActivation = Annotated[StrictBool | None, Field(validation_alias=AliasChoices("use_activation", "activation"))]


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept only to be named: see _unknown_fields
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: StrictInt | None = Field(default=None, ge=0)  # 0 or absent: every document (as vLLM reads 0)
    instruction: StrictStr | None = None
    return_documents: StrictBool | None = True  # null, as clients that send every optional field do: the default
    # vLLM's prompt cap (-1 or absent: the server's max_length) and Cohere v2's per-document cap, in tokens; both
    # cut only documents, as the contract's truncation does (vLLM would cut the prompt's head)
    truncate_prompt_tokens: StrictInt | None = Field(default=None, ge=-1)
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1)
    # Cohere v1's fields of a document object to rank on: here a part of ("title", "text"), which a document object
    # is scored by (another field is an error, not ranked on silently)
    rank_fields: list[StrictStr] | None = Field(default=None, min_length=1)
    use_activation: UseActivation = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept only to be named: see _unknown_fields
    model: StrictStr | None = None
    queries: StrictStr | list[StrictStr] = Field(validation_alias=AliasChoices("queries", "text_1"))
    documents: StrictStr | DocumentObject | list[StrictStr | DocumentObject] = Field(
        validation_alias=AliasChoices("documents", "text_2")
    )
    instruction: StrictStr | None = None
    truncate_prompt_tokens: StrictInt | None = Field(default=None, ge=-1)  # as in RerankRequest
    use_activation: UseActivation = None
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
    `priority`, `max_chunks_per_doc` ...), but never silently: a typo such as `instrution` would otherwise
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


# longest field name X-Ignored-Fields repeats in full; a longer one is cut (a typo is never this long)
_HEADER_NAME_CHARS = 80


def _header_safe(name: str) -> str:
    """A field name as an HTTP header value may carry it: printable ASCII, other characters as JSON's escapes
    (`日本` -> `\\u65e5\\u672c`, a newline -> `\\n`), cut at _HEADER_NAME_CHARS. A header is latin-1 text without
    control characters: a client's non-ASCII or multi-line field name would otherwise fail the response (500, or
    the connection dropped)."""
    if len(name) > _HEADER_NAME_CHARS:
        name = name[:_HEADER_NAME_CHARS] + "..."
    escaped = json.dumps(name)[1:-1]  # ASCII; quotes and backslashes escaped too, so the value reads back
    return escaped.replace("\x7f", "\\u007f")  # DEL: ASCII, but a control character


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
    abandoned: threading.Event = field(default_factory=threading.Event)  # its client went away while it ran
    taken: int = 0  # prompts handed to drains so far (a large request is scored over several)
    logits: list[float] = field(default_factory=list)  # the scores of those prompts, in order


class Batcher:
    """One worker thread that scores the pending requests of all clients together, by token budget."""

    def __init__(
        self,
        reranker: Reranker,
        max_batch_tokens: int | None = None,
        metrics: Metrics | None = None,
        max_queued: int | None = None,
    ):
        """`max_queued`: prompts queued or being scored, over all requests, past which `submit` raises
        `ServerBusy` (None: no bound). A request is taken whole when the queue is empty, however large."""
        self.reranker = reranker
        self.max_batch_tokens = max_batch_tokens or reranker.batch_tokens
        self.metrics = metrics or Metrics()
        self.max_queued = max_queued
        self._queued = 0  # prompts submitted whose future is not done yet
        self._lock = threading.Lock()
        self._jobs: dict[concurrent.futures.Future, _Job] = {}  # for `abandon`
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
        n = len(ids)
        with self._lock:
            if self.max_queued is not None and self._queued and self._queued + n > self.max_queued:
                raise ServerBusy(
                    f"{self._queued} documents are queued; this request's {n} would pass the limit of "
                    f"{self.max_queued} (--max-queued-documents): retry shortly"
                )
            self._queued += n
            self._jobs[job.future] = job
        self.metrics.set_queued(self._queued)
        job.future.add_done_callback(lambda future: self._done(future, n))  # scored, failed or cancelled
        self._queue.put(job)
        return job.future

    def _done(self, future: concurrent.futures.Future, n: int) -> None:
        with self._lock:
            self._queued -= n
            self._jobs.pop(future, None)
        self.metrics.set_queued(self._queued)

    def abandon(self, future: concurrent.futures.Future) -> None:
        """The request's client has gone: drop its job if it still waits in the queue; if it is being scored,
        mark it: its drain stops at the next forward pass once every job in it is marked, and a large request
        between two of its drains is not taken again."""
        if future.cancel():
            return
        with self._lock:
            job = self._jobs.get(future)
        if job is not None:
            job.abandoned.set()

    def _loop(self) -> None:
        pending: collections.deque[_Job] = collections.deque()  # jobs with prompts not yet scored, in turn order
        turned: list[_Job] = []  # jobs the last drain took a part of: after the jobs that arrived meanwhile
        stop = False
        while True:
            if not pending and not turned:
                job = None if stop else self._queue.get()
                if job is None:
                    return
                pending.append(job)
            while not stop:  # everything that arrived while the last drain ran
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True  # after the queued work (`stop`)
                else:
                    pending.append(job)
            pending.extend(turned)
            drain: list[tuple[_Job, int, int]] = []  # (job, first prompt, end) of each part in this drain
            room = MAX_PAIRS_PER_DRAIN
            while pending and room:
                job = pending.popleft()
                if not job.taken and not job.future.set_running_or_notify_cancel():
                    continue  # abandoned while it waited in the queue
                if job.abandoned.is_set():  # abandoned between two of its drains
                    job.future.set_exception(ClientGone("request abandoned by its client"))
                    continue
                end = min(len(job.ids), job.taken + room)
                drain.append((job, job.taken, end))
                room -= end - job.taken
                job.taken = end
            if drain:
                self._run(drain)
            turned = [job for job, _, _ in drain if not job.future.done()]

    def _run(self, drain: list[tuple[_Job, int, int]]) -> None:
        live = [job for job, _, _ in drain]
        flat = [ids for job, start, end in drain for ids in job.ids[start:end]]
        owner = [n for n, (_, start, end) in enumerate(drain) for _ in range(start, end)]
        groups = None
        if self.reranker.prefix_reuse:  # a job without keys: in no group (scored on the other paths)
            keys = [key for job, start, end in drain for key in (job.keys or [None] * len(job.ids))[start:end]]
            groups = prefix_groups(keys)

        def observe(batch) -> None:
            self.metrics.observe_batch(rows=len(batch), requests=len({owner[i] for i in batch}))
            if all(job.abandoned.is_set() for job in live):  # nobody waits for what is left of this drain
                raise ClientGone(f"{len(live)} request(s) abandoned by their clients")

        try:
            # the whole drain in one call: every forward pass is queued before the one wait for the device, and
            # prefix reuse / packing apply as they do offline
            logits = self.reranker.logits_for_ids(flat, self.max_batch_tokens, groups=groups, on_batch=observe)
        except ClientGone as err:
            log.info("stopped a drain of %d documents: %s", len(flat), err)
            for job in live:
                job.future.set_exception(err)
            return
        except Exception as err:
            log.exception("scoring failed")
            for job in live:
                job.future.set_exception(err)
            return
        at = 0
        for job, start, end in drain:
            part = logits[at : at + end - start]
            at += end - start
            try:  # this request's own: the other requests of the drain are answered
                check_finite(part, lambda i, start=start: f"pair {start + i} of the request")
            except NonFiniteScoresError as err:
                log.error("%s", err)
                job.future.set_exception(err)
                continue
            job.logits += part
            if end == len(job.ids):
                job.future.set_result((job.logits, sum(len(x) for x in job.ids)))


# ----------------------------------------------------------------------------------------------- app
# /v2/rerank: Cohere's v2 client (its response reads index and relevance_score, which rerank's results carry)
_RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
_SCORE_PATHS = ("/score", "/v1/score")  # vLLM serves both
_DOCUMENT_PLACE = re.compile(r"(documents|text_2)(\.\d+)?")  # a document's place in a request


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (for errors about a value of the wrong type)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return {list: "an array", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def _field_of(loc: tuple) -> str:
    parts = [str(x) for x in loc[1:] if isinstance(x, int) or x in _FIELDS]
    return ".".join(parts) or "body"


async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    if err.status == 503:
        headers = {"Retry-After": "1"}
    # a full queue (503) is not the request's fault: the type says so, as for the 500s and the shutdown's 503
    kind = "server_error" if 500 <= err.status < 600 else "invalid_request_error"
    body = error_body(err.message, err.status, err.field, kind=kind)
    return JSONResponse(body, status_code=err.status, headers=headers)


def _invalid_json_message(error: dict[str, Any], body: Any) -> str:
    """What a body that is not JSON is told: where it broke, as a client's editor counts (line and column of the
    body's text)."""
    loc = tuple(error.get("loc", ()))
    offset = loc[1] if len(loc) > 1 else None  # a character offset, not a field
    reason = (error.get("ctx") or {}).get("error") or "not JSON"
    message = f"body: invalid JSON ({reason})"
    if isinstance(offset, int) and isinstance(body, str):
        line, column = body.count("\n", 0, offset) + 1, offset - body.rfind("\n", 0, offset)
        message += f" at line {line} column {column}"
    return message


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    # the deepest error is the most specific: for a document object with a bad "text" that is
    # documents.N.text, not the str branch of the union ("documents.N: a valid string"); at equal depth, a
    # validator's own message (a document object with neither text nor title) beats the str branch's
    first = max(err.errors(), key=lambda e: (len(e.get("loc", ())), e.get("type") == "value_error"))
    invalid_json = first.get("type") == "json_invalid"  # its loc is a character offset, not a field
    where = "body" if invalid_json else _field_of(tuple(first.get("loc", ())))
    if invalid_json:
        message = _invalid_json_message(first, err.body)
    else:
        message = f"{where}: {first.get('msg', 'invalid value').removeprefix('Value error, ')}"
    if _DOCUMENT_PLACE.fullmatch(where) and first.get("type") in ("string_type", "model_type"):
        # both branches of the union failed: "Input should be a valid string" alone hid that objects are taken
        got = first.get("input")
        message = f'{where}: a document is a string or a {{"text", "title"}} object, not {_json_kind(got)}'
    if first.get("type") == "missing" and request.url.path in _SCORE_PATHS and where in _SCORE_ALIASES:
        message += f" (or its vLLM name {_SCORE_ALIASES[where]})"
    content_type = request.headers.get("content-type", "")
    if where == "body" and not content_type.startswith("application/json"):
        # FastAPI reads a body it was not told is JSON as bytes: "Input should be a valid dictionary"
        message += f" (the body must be JSON, sent with Content-Type: application/json; got {content_type!r})"
    return JSONResponse(error_body(message, 400, where), status_code=400)


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    # unknown route (404), wrong method (405): the same error body as every other error, not {"detail": ...}
    message = f"{request.method} {request.url.path}: {err.detail}"
    if err.status_code == 400 and err.detail == "There was an error parsing the body":
        message += " (the body must be JSON text in UTF-8)"  # FastAPI's answer to bytes that do not decode
    if err.status_code == 404:
        message += f" (routes: POST {', '.join(_RERANK_PATHS + _SCORE_PATHS)}; GET /health, /metrics, /v1/models)"
    body = error_body(message, err.status_code)
    return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))


async def _server_error(request: Request, err: Exception) -> JSONResponse:
    # the worker logged a model failure's traceback; a NaN score has none worth reading
    log.error("request failed: %s: %s", type(err).__name__, err, exc_info=not isinstance(err, NonFiniteScoresError))
    body = error_body(f"scoring failed: {type(err).__name__}: {err}", 500, kind="server_error")
    return JSONResponse(body, status_code=500)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in the one body of `error_body`: the API's own, a request that fails validation, FastAPI's and
    Starlette's (unknown route, wrong method, a body that does not parse) and any other failure (500)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)


def _check_query(query: str, field: str) -> None:
    if not query.strip():  # documents may be blank (a corpus has empty ones); a query ranks against nothing
        raise ApiError(400, f"{field}: empty; a query is needed to rank the documents against", field)


def _doc_value(doc: str | DocumentObject) -> Any:
    """A document as it is scored: a string as sent, an object as its known fields."""
    return doc if isinstance(doc, str) else _doc_dict(doc)


def _ranked_documents(body: RerankRequest) -> list[Any]:
    """The request's documents as they are scored: an object by its title and text, or by the part of them its
    `rank_fields` (Cohere v1) name; a field tuner cannot rank on, or an object with none of them, is a 400."""
    wanted = body.rank_fields
    if wanted is None:
        return [_doc_value(d) for d in body.documents]
    other = [f for f in wanted if f not in ("title", "text")]
    if other:
        raise ApiError(
            400,
            f"rank_fields: {', '.join(map(repr, other))}: a document object is ranked on its 'title' and 'text' "
            "(rank_fields may name either or both); send the field to rank on as 'text'",
            "rank_fields",
        )
    for n, doc in enumerate(body.documents):
        if isinstance(doc, DocumentObject) and not set(wanted) & doc.model_fields_set:
            named = ", ".join(map(repr, wanted))
            raise ApiError(
                400, f"documents.{n}: a document object has none of the rank_fields ({named})", f"documents.{n}"
            )
    return [d if isinstance(d, str) else {k: v for k, v in _doc_dict(d).items() if k in wanted} for d in body.documents]


def _rerank_results(body: RerankRequest, scores: list[float]) -> list[dict[str, Any]]:
    """Rerank's results, best first (the top `top_n`): index and score, and the document unless
    `return_documents` is false."""
    results = []
    for i in best_first(scores, body.top_n):
        row: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents is not False:
            doc = body.documents[i]
            # a document object as it was sent, its other fields (an id ...) too: Cohere's v1 API returns it so
            # (X-Ignored-Fields still says they took no part in the score)
            row["document"] = (
                {"text": doc} if isinstance(doc, str) else {"text": doc.text, **doc.model_dump(exclude_unset=True)}
            )
        results.append(row)
    return results


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


class _ApiKey:
    """The server's API key, if any: `authorize` is the dependency of every route behind it (all but /health)."""

    def __init__(self, api_key: str | None) -> None:
        # stripped as the client's token is: a key read from a secret file keeps its trailing newline
        self.key = api_key.strip().encode("utf-8") if api_key else None
        if api_key and not self.key:
            raise ValueError("api_key is blank (only whitespace): give a key, or None for no key")
        self._guarded: set[str] = set()

    async def authorize(self, request: Request) -> None:
        if self.key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest takes constant time in the length of the expected key: no timing oracle
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), self.key):
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)", "authorization")

    def guarded_paths(self, app: FastAPI) -> set[str]:
        """The paths of `app`'s routes behind the key (those that depend on `authorize`)."""
        if not self._guarded:
            for route in app.routes:
                dependant = getattr(route, "dependant", None)
                # ==, not `is`: each `self.authorize` is a new bound method, equal to the others
                if dependant is not None and any(d.call == self.authorize for d in dependant.dependencies):
                    self._guarded.add(route.path)
        return self._guarded


def _count_requests(app: FastAPI, metrics: Metrics, guard: _ApiKey) -> None:
    """Add the middleware that counts every request in `metrics` (in flight, then status and seconds by route) and
    checks a guarded route's API key before its body is read."""
    routes: set[str] = set()

    @app.middleware("http")
    async def _count(request: Request, call_next):
        start = time.perf_counter()
        metrics.inflight(+1)
        status = 500
        try:
            if guard.key is not None and request.url.path in guard.guarded_paths(app):
                # the key before the body: FastAPI parses a body before the route's dependencies run, so an
                # unauthenticated client's malformed (or 32 MB) body was read and answered 400 before the 401
                try:
                    await guard.authorize(request)
                except ApiError as err:
                    response = await _api_error(request, err)
                    status = response.status_code
                    return response
            response = await call_next(request)
            status = response.status_code
            return response
        except asyncio.CancelledError:
            status = 503  # what _ShutdownCut, the layer outside this one, answers
            raise
        except Exception as err:
            # answered here, not by Starlette's outermost handler for Exception: that one sends the 500 and then
            # raises again, and uvicorn closes the connection, so a client's next request on it (a pooled
            # keep-alive connection: httpx, requests, the Cohere SDK) failed with "connection reset"
            response = await _server_error(request, err)
            status = response.status_code
            return response
        finally:
            metrics.inflight(-1)
            if not routes:
                routes.update(getattr(route, "path", "") for route in app.routes)
            # by route, never by the raw path: one label per path a scanner tries would grow without bound
            path = request.url.path if request.url.path in routes else "other"
            metrics.observe_request(path, status, time.perf_counter() - start)


def _lifespan(batcher: Batcher):
    """The app's lifespan: the batching worker runs while the app serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; the queue is empty or finishes here
            await asyncio.to_thread(batcher.stop)

    return lifespan


class _Service:
    """What the scoring routes share: the served model and its name, the batching worker, the metrics, the
    documents limit, and the unknown field names already logged."""

    def __init__(self, reranker: Reranker, name: str, batcher: Batcher, metrics: Metrics, max_documents: int):
        self.reranker, self.name, self.batcher, self.metrics = reranker, name, batcher, metrics
        self.max_documents = max_documents
        self._warned: set[str] = set()

    def activated(self, logits: list[float], use_activation: bool | None) -> list[float]:
        """A request's scores: probabilities (calibrated when the model has a calibration), or with vLLM's
        use_activation false the raw logits."""
        return logits if use_activation is False else [self.reranker._normalize(x) for x in logits]

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            message = f"model {requested!r} is not served here; this server serves {self.name!r}"
            raise ApiError(404, message, "model")

    def check_documents(self, documents: list, field: str = "documents") -> None:
        if not documents:
            raise ApiError(400, f"{field}: at least one document is required", field)
        if len(documents) > self.max_documents:
            message = f"{field}: {len(documents)} documents, over the limit of {self.max_documents}"
            raise ApiError(413, message, field)

    def prompt_cap(self, value: int | None) -> int | None:
        """A request's `truncate_prompt_tokens` as a max_length (-1 or None: the server's own)."""
        if value is None or value == -1:
            return None
        max_length = self.reranker.max_length
        if value > max_length:  # as vLLM refuses one over its max_model_len
            message = f"truncate_prompt_tokens: {value} is over this server's max_length of {max_length}"
            raise ApiError(400, message, "truncate_prompt_tokens")
        try:
            self.reranker.encoder.budget_for(value)  # named here, before any tokenizing
        except ValueError as err:
            raise ApiError(400, f"truncate_prompt_tokens: {err}", "truncate_prompt_tokens") from None
        return value

    def flag_unknown(self, body: RerankRequest | ScoreRequest, request: Request, response: Response) -> None:
        """Name the request's unknown fields in its X-Ignored-Fields header, and in the log once per name."""
        unknown = _unknown_fields(body)
        if not unknown:
            return
        response.headers["X-Ignored-Fields"] = ", ".join(_header_safe(f) for f in unknown)
        new = [f for f in unknown if f not in self._warned]
        if new:  # once per field name, not once per request: a client that always sends one stays quiet after
            self._warned.update(new)
            said = ", ".join(f"{f!r}" + (f" (did you mean {unknown[f]!r}?)" if unknown[f] else "") for f in new)
            log.warning("%s: ignored unknown request field(s) %s", request.url.path, said)

    # the scoring routes (_add_scoring_routes); no docstrings: FastAPI would publish them as OpenAPI descriptions
    async def rerank(self, body: RerankRequest, request: Request, response: Response) -> dict[str, Any]:
        self.check_model(body.model)
        self.flag_unknown(body, request, response)
        _check_query(body.query, "query")
        self.check_documents(body.documents)
        docs = _ranked_documents(body)
        fields = {"query": "query", "instruction": "instruction"}
        scores, tokens = await self.score(
            request,
            [(body.query, d, body.instruction) for d in docs],
            lambda part, n: fields.get(part, f"documents.{n}"),
            body.use_activation,
            body.truncate_prompt_tokens,
            body.max_tokens_per_doc,
        )
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": self.name,
            "usage": _usage(tokens),
            "results": _rerank_results(body, scores),
        }

    async def score_route(self, body: ScoreRequest, request: Request, response: Response) -> dict[str, Any]:
        self.check_model(body.model)
        for ours in body._both_names:  # before flag_unknown: the second name is refused, not "ignored"
            vllm = _SCORE_ALIASES[ours]
            raise ApiError(400, f"{ours}: sent as both {ours} and {vllm} (vLLM's name for it); send one", ours)
        self.flag_unknown(body, request, response)
        triples, field_of = self._score_pairs(body)
        scores, tokens = await self.score(request, triples, field_of, body.use_activation, body.truncate_prompt_tokens)
        return {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": self.name,
            "data": [{"index": i, "object": "score", "score": x} for i, x in enumerate(scores)],
            "usage": _usage(tokens),
        }

    def _score_pairs(self, body: ScoreRequest) -> tuple[list[tuple[str, Any, str | None]], Callable[[str, int], str]]:
        """/score's (query, document, instruction) triples (one query for every document, or one each) and
        `field_of` for them: a part's field as the client named it (`queries` or `text_1` ...), with its index when
        the field is a list."""
        q_field, d_field = body._queries_name, body._documents_name
        one_query, one_document = isinstance(body.queries, str), isinstance(body.documents, (str, DocumentObject))
        queries = [body.queries] if one_query else body.queries
        documents = [body.documents] if one_document else body.documents

        def field_of(part: str, n: int) -> str:
            if part == "instruction":
                return "instruction"
            if part == "query":
                return q_field if one_query else f"{q_field}.{n}"
            return d_field if one_document else f"{d_field}.{n}"

        self.check_documents(documents, d_field)
        if not queries:
            raise ApiError(400, f"{q_field}: at least one query is required", q_field)
        for n, query in enumerate(queries):
            _check_query(query, field_of("query", n))
        if len(queries) not in (1, len(documents)):
            raise ApiError(
                400,
                f"{q_field}: {len(queries)} queries for {len(documents)} documents (use 1 or one per document)",
                q_field,
            )
        if len(queries) == 1:
            queries = queries * len(documents)
        return [(q, _doc_value(d), body.instruction) for q, d in zip(queries, documents, strict=True)], field_of

    async def score(
        self,
        request: Request,
        triples: list[tuple[str, Any, str | None]],
        field_of: Callable[[str, int], str],
        use_activation: bool | None,
        truncate_prompt_tokens: int | None,
        max_document_tokens: int | None = None,
    ) -> tuple[list[float], int]:
        """The request's (query, document, instruction) triples scored and counted: (scores as `activated`,
        prompt tokens). The one path of /rerank and /score.

        `field_of(part, n)`: the request field of pair n's "query", "document" or "instruction" (for errors);
        `truncate_prompt_tokens` (see `prompt_cap`) and `max_document_tokens`: the request's own truncation.
        """
        logits, tokens = await self._logits(
            request, triples, field_of, self.prompt_cap(truncate_prompt_tokens), max_document_tokens
        )
        self.metrics.add_documents(len(triples))
        return self.activated(logits, use_activation), tokens

    async def _logits(
        self,
        request: Request,
        triples: list[tuple[str, Any, str | None]],
        field_of: Callable[[str, int], str],
        max_length: int | None,
        max_document_tokens: int | None,
    ) -> tuple[list[float], int]:
        """The triples' (logits, prompt tokens), from the batcher."""
        ids = await self._encode(triples, field_of, max_length, max_document_tokens)
        # a failure of the model itself (out of memory ...) is the server's: 500, through _server_error
        keys = [(query, instruction) for query, _, instruction in triples]
        try:
            future = self.batcher.submit(ids, keys)
        except ServerBusy as err:
            raise ApiError(503, f"server busy: {err}") from None
        return await _scored_or_gone(self.batcher, future, request)

    async def _encode(
        self,
        triples: list[tuple[str, Any, str | None]],
        field_of: Callable[[str, int], str],
        max_length: int | None,
        max_document_tokens: int | None,
    ) -> list[list[int]]:
        """The triples' prompts as token ids; a text the encoder refuses is this request's 400, named by field."""
        try:
            # tokenized here, off the event loop and beside the worker's forward pass (the Rust tokenizer
            # releases the GIL); a query over the token budget fails this request alone
            ids = await asyncio.to_thread(self.reranker.encode, triples, max_length, max_document_tokens)
        except PromptTextError as err:
            where = field_of(err.part, err.index)
            if max_length is not None and err.part in ("query", "instruction"):  # the request's own cap is too small
                raise ApiError(400, f"truncate_prompt_tokens: {max_length} is too small: {err}", where) from None
            raise ApiError(400, f"{where}: {err}", where) from None
        except (ValueError, TypeError) as err:  # any other text the encoder refuses: still this request's fault
            raise ApiError(400, str(err)) from None
        for message in self.reranker.calibration_mismatches(inst for _, _, inst in triples):
            log.warning("%s", message)  # a request's own instruction, off the one the calibration was fitted with
        return ids


async def _client_gone(request: Request) -> None:
    """Return once the client has closed the connection. The body has been read, so the next ASGI message can
    only be the disconnect (uvicorn sends it when the connection drops, or after the response)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _scored_or_gone(batcher: Batcher, future: concurrent.futures.Future, request: Request) -> Any:
    """The batcher's result for `future`, unless the client goes first (its request is then dropped from the queue,
    or its drain stopped, and it gets CLIENT_CLOSED_REQUEST) or uvicorn cancels the request at shutdown."""
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # uvicorn cancels the requests it still holds when its graceful-shutdown timeout ends: nobody will
        # read the scores, and the lifespan's shutdown waits for the worker
        batcher.abandon(future)
        waiter.cancel()
        raise
    finally:
        gone.cancel()
    if not waiter.done():
        # the client closed the connection (its timeout, a cancelled search): nobody will read the scores
        batcher.abandon(future)
        waiter.cancel()
        raise ApiError(CLIENT_CLOSED_REQUEST, "client closed the connection before the scores were ready")
    return waiter.result()


def _add_info_routes(app: FastAPI, service: _Service, authorize: Callable) -> None:
    """GET /health (and its HEAD probe), the OpenAI model list and model, and /metrics; all but /health behind
    `authorize`."""
    name = service.name

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # the calibration tells a client why these probabilities differ from vLLM's sigmoid(logit) on the same export
        return {"status": "ok", "model": name, "calibration": service.reranker.calibration}

    # load balancers' probes that read no body (a route of its own: one route for both methods gives the OpenAPI
    # schema one operation id twice, which FastAPI warns about when /docs is opened)
    @app.head("/health", include_in_schema=False)
    async def health_probe() -> Response:
        return Response()

    created = int(time.time())

    # OpenAI's model list, as vLLM serves it: clients (openai.models.list(), LiteLLM, Open WebUI) read the name to
    # send in `model` from here; behind the key like every route but /health, as vLLM guards it
    card = {"id": name, "object": "model", "created": created, "owned_by": "tuner"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    # OpenAI's model retrieval (openai.models.retrieve(NAME)); a served name may hold a '/' (RUN/checkpoint-N)
    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def model(model_id: str) -> dict[str, Any]:
        service.check_model(model_id)
        return card

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")


def _add_scoring_routes(app: FastAPI, service: _Service, authorize: Callable) -> None:
    """POST rerank (Cohere's and vLLM's paths) and score (vLLM's), behind `authorize`."""
    for path in _RERANK_PATHS:
        app.post(path, dependencies=[Depends(authorize)])(service.rerank)
    for path in _SCORE_PATHS:
        app.post(path, dependencies=[Depends(authorize)])(service.score_route)


def create_app(
    reranker: Reranker,
    model_name: str | None = None,
    api_key: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_batch_tokens: int | None = None,
    max_queued_documents: int | None = DEFAULT_MAX_QUEUED_DOCUMENTS,
    max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the batching worker.

    Args:
        reranker: the loaded model (see `Reranker.from_pretrained`).
        model_name: the name requests may give in `model` (default: the reranker's name's last part).
        api_key: if set, every route but `/health` needs `Authorization: Bearer <api_key>` (and the interactive
            `/docs` and `/openapi.json` pages are off).
        max_documents: documents per request; more get 413.
        max_batch_tokens: padded tokens per forward pass (default: the reranker's).
        max_queued_documents: documents queued or being scored over all requests; a request that would pass it
            gets 503 with Retry-After (None: no bound).
        max_request_bytes: request body size; a larger body gets 413 before it is parsed (None: no bound).
    """
    name = model_name or Path(str(reranker.name)).name or "tuner-reranker"
    metrics = Metrics()
    batcher = Batcher(reranker, max_batch_tokens, metrics, max_queued=max_queued_documents)
    guard = _ApiKey(api_key)

    # the interactive pages describe every route; behind an API key they would be open to anyone: off
    pages = {"docs_url": None, "redoc_url": None, "openapi_url": None} if guard.key else {}
    app = FastAPI(title="tuner reranker", lifespan=_lifespan(batcher), **pages)
    app.state.batcher = batcher
    app.state.metrics = metrics
    if max_request_bytes is not None:
        app.add_middleware(_BodyLimit, max_bytes=max_request_bytes)  # inside _count_requests': its 413s are counted

    _add_error_handlers(app)
    _count_requests(app, metrics, guard)
    app.add_middleware(_ShutdownCut)  # outermost: a cancelled request passes through every other layer

    service = _Service(reranker, name, batcher, metrics, max_documents)
    _add_info_routes(app, service, guard.authorize)
    _add_scoring_routes(app, service, guard.authorize)
    return app


class _ShutdownCut:
    """ASGI middleware: a request that uvicorn cancels (its graceful-shutdown timeout ended while it was being
    scored) gets a 503 in the error body of every other error, which a client or load balancer retries elsewhere;
    uvicorn answered it with a plain-text 500 and logged a traceback, as for a crash."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            if scope["type"] != "http" or started:
                raise
            message = "server shutting down: the request was cut off before its scores were ready; retry it"
            log.warning("%s %s: %s", scope.get("method"), scope.get("path"), message)
            response = JSONResponse(error_body(message, 503, kind="server_error"), 503, {"Retry-After": "1"})
            await response(scope, receive, send)


class _BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is parsed, whether its Content-Length
    says so (refused at once) or a chunked body grows past it (refused when it does)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"request body over {self.max_bytes} bytes (--max-request-mb)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            err = self._too_large()
            message = f"{scope.get('method')} {scope.get('path')}: {err.detail}"
            response = JSONResponse(error_body(message, 413), status_code=413)
            await response(scope, receive, send)
            return
        seen, whole = 0, False

        async def limited():
            nonlocal seen, whole
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if seen > self.max_bytes:
                    # an HTTPException passes FastAPI's body parsing unchanged (any other error becomes its 400)
                    raise self._too_large()
            elif message["type"] == "http.disconnect" and not whole:
                # gone while sending its body: counted as the client's 499, not as a 400 "error parsing the body"
                raise StarletteHTTPException(
                    CLIENT_CLOSED_REQUEST, "client closed the connection while sending its body"
                )
            return message

        await self.app(scope, limited, send)


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_batch_tokens: int | None = None,
    max_queued_documents: int | None = DEFAULT_MAX_QUEUED_DOCUMENTS,
    max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
    max_length: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    graceful_timeout: float = 25.0,
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
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s:%d with no API key: anyone who can reach this port can use the model and its compute "
            "(--api-key-env VAR, or --host 127.0.0.1 behind a proxy)",
            host,
            port,
        )
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
        model_name=model_name or default_served_name(model),
        api_key=api_key,
        max_documents=max_documents,
        max_batch_tokens=max_batch_tokens,
        max_queued_documents=max_queued_documents,
        max_request_bytes=max_request_bytes,
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
