"""The HTTP side: OpenAI's API over the engine, a model card, tokenizer routes, metrics, the page.

    POST /v1/completions, /v1/chat/completions
        JSON body --check (pydantic; every error in OpenAI's body)--> prompt ids --> Sequence(s)
        --> Engine.submit (429 + Retry-After when the queue is full)
        <-- one JSON answer when every sequence has finished, or server-sent events: one chunk per
            step of the engine (`data: {...}`), then `data: [DONE]`
    POST /v1/classify (a classifier): texts --> their ids (cut to the context) --> one batched forward
        pass on the classifier's thread (classify.py) --> each text's label and probabilities
    GET  /v1/models, /model_card, /health, /metrics;  POST /tokenize, /detokenize
    GET  /, /static/<file>: the page (no key needed: the page asks the user for it)

The engine's worker thread calls each sequence's on_event; here that hands the event to the event
loop (call_soon_threadsafe), into one asyncio.Queue per request. A client that hangs up cancels
its sequences, which leave the batch at the engine's next step.

The model loads in a thread after the server starts listening: /health says 503 until it is ready,
and again if the engine stops on an error it cannot contain (the server then exits non-zero).

Bounded before work: a body over max_body bytes is refused (413) before it is read; prompts are
tokenized and chat templates rendered in a thread pool, off the event loop, after a check on the
text's length that needs no tokenizer; a request's deadline (--request-timeout) is kept here as
well as by the engine, so that a stuck engine cannot hold a client forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from basics import UserError
from bpe import PATTERNS

from .classify import Classifications, encode_texts
from .engine import (
    TTFT_BUCKETS,
    Engine,
    EngineFailed,
    Event,
    QueueFull,
    SamplingParams,
    Sequence,
    one_line,
)

STATIC = Path(__file__).parent / "static"
MAX_N = 4  # choices per request (n)
MAX_PROMPTS = 8  # prompts in one completions request
MAX_STOP = 4  # stop strings, as OpenAI allows
MAX_LOGPROBS = 20  # most likely tokens shown beside each token, at most (OpenAI's limit for chat)
MAX_BIAS = 300  # tokens in one logit_bias, as OpenAI allows
MAX_INPUTS = 32  # texts in one classify request
MAX_INPUT_BYTES = 2**20  # bytes of the texts of one classify request together (each is cut to the context once tokenized)
RETRY_AFTER = "1"  # seconds, when the queue is full or the model is loading
DISCONNECT_POLL = 0.25  # seconds between checks that a client is still there
DEADLINE_GRACE = 2.0  # seconds the web side waits past a request's deadline for the engine to end it
MAX_BODY = 4 * 2**20  # bytes of a request body, by default (--max-body)
COUNTED_PATHS = {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/models", "/tokenize", "/detokenize",
                 "/model_card", "/health", "/metrics", "/", "/openapi.json"}
METRICS_POINTS = 500  # the model card's training curves keep at most this many points each
log = logging.getLogger("gpt2_llm.serve")


# ---- errors in OpenAI's shape ------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "service_unavailable"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}  # fmt: skip
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation error (bad JSON, a missing or ill-typed field) as a 400 naming the field."""
    first = most_telling(exc.errors())
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    # A field given as one of several types (prompt: str | list[int] | ...) names the type tried.
    where = where[:1] + [part for part in where[1:] if part not in TYPE_NAMES]
    param = where[0] if where else None
    shown = ".".join(where)
    if param is None:
        return ApiError(400, f"the body must be a JSON object: {first['msg']}")
    return ApiError(400, f"{shown}: {first['msg']}", param=param)


def most_telling(errors: list[dict]) -> dict:
    """Of the errors of the first field named (one per type a field of several types may take), the
    one that says most: a broken limit before a wrong type ("at most 32 items" rather than "a valid
    string" for a list that is too long), then the deepest ("input.1" rather than "input")."""
    field = errors[0].get("loc", ())[:2]
    same = [e for e in errors if e.get("loc", ())[:2] == field]
    return min(same, key=lambda e: (e.get("type", "").endswith("_type"), -len(e.get("loc", ()))))


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error's body (the schema at /openapi.json says so for each 4xx and 5xx)."""

    error: ErrorDetail


ERROR_RESPONSES = {"4XX": {"model": ErrorBody, "description": "The request was refused."},
                   "5XX": {"model": ErrorBody, "description": "The model is loading (503); a bug (500)."}}  # fmt: skip


TYPE_NAMES = {"str", "int", "float", "bool", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]",
              "function-after[check(), str]"}  # fmt: skip


# ---- request bodies ----------------------------------------------------------------------------


class Strict(BaseModel):
    """Fields of the right JSON type only ("5" is not a number); unknown fields are ignored (clients
    send OpenAI fields this server has no use for, such as "user")."""

    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """The fields both generation routes share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)  # 0: nothing new (completions' echo: the prompt's logprobs alone)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)  # vLLM's extension; -1 or 0: no limit
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(None, max_length=MAX_BIAS)  # id -> bias


class CompletionRequest(Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # the chosen token's, and this many most likely
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: str
    content: str | list[TextPart]


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]


class ClassifyRequest(Strict):
    model: str | None = None
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]  # a text, or several


# ---- the served model ----------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    """What the loader gave, and what is made once from it."""

    loaded: object  # loading.Loaded (its tokenizer filled in)
    engine: Engine | None  # None for a classifier, which generates nothing
    model_id: str
    chat: object  # a way to turn messages into prompt ids: see chat_renderer
    created: int
    longest_token: int  # bytes of the tokenizer's longest token: a text of more bytes than this many per
    #                     token of the context cannot fit it, whatever the tokenizer makes of it
    classifier: Classifications | None = None  # a classifier's worker (engine is None then)

    @property
    def block_size(self) -> int:
        return self.loaded.model.config.block_size


def model_id_of(loaded) -> str:
    """The id /v1/models shows: a file's or folder's name, or the hub name."""
    return loaded.name if loaded.source == "hub" else Path(loaded.name).name or str(loaded.name)


def chat_renderer(loaded) -> tuple[Callable[[list[dict]], list[int]], tuple[str, ...], str]:
    """How chat messages become prompt ids for this model: (render, implicit stop strings, name).

    Our templates (alpaca, chat) are encoded piece by piece as in training (instruct.prompt_ids);
    a folder's own Jinja template is rendered in a sandbox, as transformers renders it; a model
    without a template (a base model) gets the plain chat template, whose next header ends the
    answer (a base model never learned to end a turn with <|endoftext|>).
    """
    from ..instruct import CHAT_HEADERS, TEMPLATES, TURN_SEPARATOR, prompt_ids

    stored, tokenizer = loaded.chat_template, loaded.tokenizer
    if stored is not None and stored.get("name") is None:
        render_jinja = jinja_renderer(stored["jinja"], tokenizer)
        return (lambda messages: tokenizer.encode(render_jinja(messages), allowed_special="all")), (), "jinja"
    template = TEMPLATES[stored["name"]] if stored is not None else TEMPLATES["chat"]
    stops = tuple(TURN_SEPARATOR + header for header in CHAT_HEADERS.values()) if template.name == "chat" else ()
    return (lambda messages: prompt_ids(template, messages, tokenizer)), stops, template.name


def jinja_renderer(source: str, tokenizer) -> Callable[[list[dict]], str]:
    """A foreign chat template (a transformers folder's), rendered in Jinja's sandbox."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise UserError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)
    names = {i: name for name, i in tokenizer.special_tokens.items()}
    eos = names.get(max(names)) if names else ""

    def render(messages: list[dict]) -> str:
        try:
            return template.render(messages=messages, add_generation_prompt=True, bos_token=eos, eos_token=eos)
        except TemplateError as e:
            raise UserError(f"the model's chat template cannot render these messages: {e}") from None

    return render


# ---- the app -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Serving:
    """What the app's routes share: the model once loaded (or why it could not be), the API key and
    the request counts. create_app makes one and keeps it as app.state.serving (tests read it too)."""

    api_key: str | None = None
    served: Served | None = None  # None while the model loads, or when it could not be loaded
    error: BaseException | None = None  # why the load failed
    requests_total: Counter = dataclasses.field(default_factory=Counter)  # (path, status) -> count


def create_app(load: Callable[[], object], api_key: str | None = None, cors_origins: tuple[str, ...] = (),
               max_batch: int = 16, max_queue: int = 64, request_timeout: float | None = None,
               batch_invariant: bool = False, max_body: int = MAX_BODY, prefix_cache_mb: float = 0,
               on_error: Callable[[BaseException], None] | None = None) -> FastAPI:  # fmt: skip
    """The server's app. `load()` returns a loading.Loaded with a tokenizer (loading.load_with_tokenizer);
    it runs in a thread once the server is up. on_error(exc) is told when the load fails, or when the
    engine stops on an error it cannot contain: either way the server cannot serve."""
    serving = Serving(normalised_key(api_key))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_options = {"max_batch": max_batch, "max_queue": max_queue, "request_timeout": request_timeout,
                          "batch_invariant": batch_invariant, "prefix_cache_mb": prefix_cache_mb,
                          "on_failure": on_error}  # fmt: skip
        threading.Thread(target=load_model, args=(serving, load, engine_options, on_error), name="gpt2-load",
                         daemon=True).start()  # fmt: skip
        yield
        s = serving.served
        if s is not None:
            (s.engine or s.classifier).stop()

    # The schema (for clients and the fuzz test) without the docs pages; its 4XX replaces FastAPI's 422.
    app = FastAPI(title="gpt2-toolkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  responses=ERROR_RESPONSES)
    app.state.serving = serving
    app.state.request_timeout = request_timeout  # the classify route's wait (the engine keeps its own)
    app.add_middleware(LimitBody, max_body=max_body)
    app.add_middleware(CountRequests, counts=serving.requests_total, paths=COUNTED_PATHS)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    for exc_class, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.include_router(open_routes)
    app.include_router(api_routes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def load_model(serving: Serving, load: Callable[[], object], engine_options: dict,
               on_load_error: Callable[[BaseException], None] | None) -> None:  # fmt: skip
    """In a thread: load the model, start its engine (a classifier's worker instead), and make it
    `serving.served`; or keep the error."""
    try:
        loaded = load()
        engine, classifier = None, None
        if loaded.classes is not None:
            classifier = Classifications(loaded.model, engine_options["max_batch"], engine_options["max_queue"])
        else:
            engine = Engine(loaded.model, loaded.tokenizer, **engine_options)
            engine.start()
        render, stops, name = chat_renderer(loaded)
        tokenizer = loaded.tokenizer
        longest = max(len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size))
        serving.served = Served(loaded, engine, model_id_of(loaded), (render, stops, name), int(time.time()), longest,
                                classifier)  # fmt: skip
    except BaseException as e:  # noqa: BLE001 -- told to the runner, which ends the server
        serving.error = e
        if on_load_error is not None:
            on_load_error(e)
        else:
            log.error("cannot load the model: %s", e)


# ---- errors and guards ----


async def on_api_error(request: Request, exc: ApiError):
    return exc.response()


async def on_validation_error(request: Request, exc: RequestValidationError):
    return validation_error(exc).response()


async def on_http_error(request: Request, exc: StarletteHTTPException):
    messages = {404: f"no such path: {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}  # fmt: skip
    headers = getattr(exc, "headers", None)
    return ApiError(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers=headers).response()


async def on_bug(request: Request, exc: Exception):
    log.exception("internal error on %s", request.url.path)  # a bug: its traceback goes to the log
    return JSONResponse({"error": {"message": "internal server error", "type": "server_error",
                                   "param": None, "code": None}}, status_code=500)  # fmt: skip


ERROR_HANDLERS = {ApiError: on_api_error, RequestValidationError: on_validation_error,
                  StarletteHTTPException: on_http_error, Exception: on_bug}  # fmt: skip


def normalised_key(key: str | None) -> str | None:
    """A key as it is compared: without surrounding whitespace (a key file's newline, a pasted
    space), on the server's side and on the presented token's alike."""
    return key.strip() if key is not None else None


def check_key(request: Request) -> None:
    """Every API route's guard: the request must carry the API key, when the server has one."""
    api_key = request.app.state.serving.api_key
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(normalised_key(token).encode(), api_key.encode()):
        raise ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer KEY'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def generating(request: Request, model: str | None = None) -> Served:
    """served(), for a generation route: 400 when the model is a classifier."""
    s = served(request, model)
    if s.classifier is not None:
        raise ApiError(400, f"this model is a classifier (classes: {', '.join(s.classifier.names)}); it generates "
                            f"no text: use POST /v1/classify", param="model", code="model_is_classifier")  # fmt: skip
    return s


def served(request: Request, model: str | None = None) -> Served:
    """The model, once loaded (503 before); 404 when the request names another one."""
    serving: Serving = request.app.state.serving
    s = serving.served
    if s is None:
        why = "the model could not be loaded" if serving.error is not None else "the model is loading"
        raise ApiError(503, why, headers={"Retry-After": RETRY_AFTER})
    if s.engine is not None and s.engine.failure is not None:
        raise ApiError(503, "the engine has stopped on an error; the server is restarting")
    if model is not None and model not in (s.model_id, s.loaded.name):
        raise ApiError(404, f"the model '{model}' does not exist: this server serves '{s.model_id}'",
                       param="model", code="model_not_found")
    return s


# ---- the routes: the page and health need no key; every API route does ----

open_routes = APIRouter()
api_routes = APIRouter(dependencies=[Depends(check_key)])


@open_routes.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "index.html")


@open_routes.get("/health")
async def health(request: Request):
    served(request)  # 503 while loading, and once the engine has stopped on an error
    return {"status": "ok"}


@api_routes.get("/v1/models")
async def models(request: Request):
    return {"object": "list", "data": [model_entry(served(request))]}


@api_routes.get("/v1/models/{model_id:path}")
async def one_model(model_id: str, request: Request):
    return model_entry(served(request, model_id))


@api_routes.get("/model_card")
async def model_card(request: Request):
    return card(served(request))


@api_routes.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    s = generating(request, body.model)
    refuse_unsupported(body, ("best_of", (body.best_of or 1) > 1), ("suffix", body.suffix))
    prompts = await asyncio.to_thread(completion_prompts, body.prompt, s)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    return await generate(request, s, body, prompts, max_tokens, "prompt", chat=False)


@api_routes.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    s = generating(request, body.model)
    refuse_unsupported(body, ("max_tokens", body.max_tokens == 0))
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    ids = await asyncio.to_thread(chat_ids, body.messages, s)
    max_tokens = body.max_completion_tokens or body.max_tokens
    return await generate(request, s, body, [ids], max_tokens, "messages", chat=True)


@api_routes.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request):
    """Each text's label and class probabilities (a classifier's route; a language model answers 400)."""
    s = served(request, body.model)
    if s.classifier is None:
        raise ApiError(400, "this model is a language model, not a classifier: use /v1/completions or "
                            "/v1/chat/completions (a model trained with train --classify answers here)",
                       param="model", code="model_not_classifier")  # fmt: skip
    texts = [body.input] if isinstance(body.input, str) else body.input
    check_texts(texts)
    rows = await asyncio.to_thread(encode_texts, s.loaded.tokenizer, texts, s.block_size)
    try:
        future = s.classifier.submit(rows)
    except QueueFull as e:
        raise ApiError(429, str(e), code="queue_full", headers={"Retry-After": RETRY_AFTER}) from None
    except RuntimeError:
        raise ApiError(503, "the server is shutting down", headers={"Retry-After": RETRY_AFTER}) from None
    timeout = request.app.state.request_timeout
    try:
        probabilities = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except asyncio.TimeoutError:
        raise ApiError(503, f"the texts were not classified within the request time limit ({timeout:g} s)",
                       headers={"Retry-After": RETRY_AFTER}) from None  # fmt: skip
    except asyncio.CancelledError:
        if future.cancelled():  # the server stopped before this request's turn came
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": RETRY_AFTER}) from None
        raise
    except Exception as e:  # a fault in the forward pass fails this request alone
        log.error("classification failed", exc_info=e)
        raise ApiError(500, f"classification failed: {one_line(e)}", code="classification_failed") from None
    return classification_answer(s, rows, probabilities)


def check_texts(texts: list[str]) -> None:
    """400 for an empty text; 413 for texts whose bytes together exceed MAX_INPUT_BYTES (before tokenizing)."""
    empty = next((i for i, text in enumerate(texts) if not text), None)
    if empty is not None:
        raise ApiError(400, f"input[{empty}] is empty: give a text to classify" if len(texts) > 1 else
                            "input is empty: give a text to classify", param="input")  # fmt: skip
    size = sum(len(text.encode("utf-8", errors="replace")) for text in texts)
    if size > MAX_INPUT_BYTES:
        raise ApiError(413, f"the input has {size:,} bytes; a classify request takes at most {MAX_INPUT_BYTES:,} "
                            f"(each text is cut to the model's context anyway)", param="input",
                       code="input_too_large")  # fmt: skip


def classification_answer(s: Served, rows: list[list[int]], probabilities: list[list[float]]) -> dict:
    names = s.classifier.names
    data = [{"object": "classification", "index": i, "label": names[max(range(len(p)), key=p.__getitem__)],
             "probabilities": dict(zip(names, p))} for i, p in enumerate(probabilities)]  # fmt: skip
    tokens = sum(len(ids) for ids in rows)
    return {"object": "list", "model": s.model_id, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


@api_routes.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    s = served(request, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give 'prompt' (a text) or 'messages' (a chat), one of them", param="prompt")
    ids = await asyncio.to_thread(encode, body.prompt, s) if body.prompt is not None else \
        await asyncio.to_thread(chat_ids, body.messages, s)
    return {"tokens": ids, "count": len(ids), "max_model_len": s.block_size}


@api_routes.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    s = served(request, body.model)
    check_ids(body.tokens, s, "tokens")
    return {"prompt": await asyncio.to_thread(s.loaded.tokenizer.decode, body.tokens)}


@api_routes.get("/metrics")
async def metrics(request: Request):
    serving: Serving = request.app.state.serving
    return PlainTextResponse(prometheus_text(serving.served, serving.requests_total),
                             media_type="text/plain; version=0.0.4")


# ---- generation ----------------------------------------------------------------------------------


def refuse_unsupported(body: Sampling, *extra: tuple[str, object]) -> None:
    for name, value in extra:
        if value:
            raise ApiError(400, f"this {name} is not supported by this server", param=name)
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")


def encode(text: str, s: Served, param: str = "prompt") -> list[int]:
    check_length(len(text.encode("utf-8", errors="replace")), s, param)
    return s.loaded.tokenizer.encode(text, allowed_special="all")  # as predict: <|endoftext|> is the token


def check_length(size: int, s: Served, param: str) -> None:
    """413 for a text of `size` bytes that cannot fit the context, before the tokenizer reads it."""
    block_size = s.block_size
    if size > (block_size - 1) * s.longest_token:
        raise ApiError(413, f"the {param} has {size:,} bytes: more than this model's context of {block_size} tokens "
                            f"can hold", param=param, code="context_length_exceeded")  # fmt: skip


def check_ids(ids: list[int], s: Served, param: str) -> None:
    size = s.loaded.tokenizer.vocab_size
    bad = next((i for i in ids if not 0 <= i < size), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is out of range: the vocabulary has ids 0 to {size - 1}", param=param)


def completion_prompts(prompt, s: Served) -> list[list[int]]:
    """The prompt field (a text, a list of ids, or a list of either) as lists of ids."""
    many = isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
    prompts = list(prompt) if many else [prompt]
    if not prompts:
        raise ApiError(400, "prompt is empty", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", param="prompt")
    out = []
    for p in prompts:
        ids = encode(p, s) if isinstance(p, str) else list(p)
        check_ids(ids, s, "prompt")
        out.append(ids)
    return out


def chat_ids(messages: list[Message], s: Served) -> list[int]:
    render = s.chat[0]
    plain = [{"role": m.role, "content": m.content if isinstance(m.content, str) else
              "".join(part.text for part in m.content)} for m in messages]  # fmt: skip
    check_length(sum(len(m["content"].encode("utf-8", errors="replace")) for m in plain), s, "messages")
    try:
        return render(plain)
    except UserError as e:
        raise ApiError(400, str(e), param="messages") from None


def sampling_params(body: Sampling, max_tokens: int, stop: tuple[str, ...], seed: int | None, chat: bool,
                    bias: dict[int, float] | None) -> SamplingParams:  # fmt: skip
    if chat:
        logprobs, prompt_logprobs = ((body.top_logprobs or 0) if body.logprobs else None), None
    else:
        logprobs, prompt_logprobs = body.logprobs, (body.logprobs if body.echo else None)
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature,
                          top_k=body.top_k if body.top_k and body.top_k > 0 else None,
                          top_p=body.top_p if body.top_p < 1.0 else None, seed=seed, stop=stop,
                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                          logit_bias=bias, logprobs=logprobs, prompt_logprobs=prompt_logprobs)  # fmt: skip


def logit_bias_of(body: Sampling, vocab_size: int) -> dict[int, float] | None:
    """OpenAI's logit_bias ({"50256": -100}) with int keys; 400 for a key that is not a token id."""
    if not body.logit_bias:
        return None
    bias = {}
    for key, value in body.logit_bias.items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise ApiError(400, f"logit_bias: {key!r} is not a token id (0 to {vocab_size - 1})", param="logit_bias")
        bias[int(key)] = value  # its range is the schema's
    return bias


def stop_strings(body: Sampling, implicit: tuple[str, ...]) -> tuple[str, ...]:
    given = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(given) > MAX_STOP:
        raise ApiError(400, f"at most {MAX_STOP} stop strings, got {len(given)}", param="stop")
    return tuple(s for s in (*given, *implicit) if s)


def check_fits(ids: list[int], max_tokens: int | None, block_size: int, what: str) -> int:
    """max_tokens for this prompt (the rest of the context when not given); 413 or 400 when it cannot fit."""
    if not ids:
        raise ApiError(400, f"the {what} is empty: give at least one token", param=what)
    if len(ids) >= block_size:
        raise ApiError(413, f"the {what} has {len(ids)} tokens; this model's context is {block_size} tokens, so "
                            f"a prompt may have at most {block_size - 1}", param=what, code="context_length_exceeded")
    room = block_size - len(ids)
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise ApiError(400, f"this model's context is {block_size} tokens; the {what} has {len(ids)}, so max_tokens "
                            f"may be at most {room}, got {max_tokens}", param="max_tokens",
                       code="context_length_exceeded")  # fmt: skip
    return max_tokens


async def generate(request: Request, s: Served, body: Sampling, prompts: list[list[int]], max_tokens: int | None,
                   what: str, chat: bool):  # fmt: skip
    """Queue n sequences per prompt; answer with one JSON body, or stream their events as SSE."""
    stops = stop_strings(body, s.chat[1] if chat else ())
    bias = logit_bias_of(body, s.loaded.model.config.vocab_size)
    limits = [check_fits(ids, max_tokens, s.block_size, what) for ids in prompts]
    tokenizer = s.loaded.tokenizer
    stop_ids = set(tokenizer.special_tokens.values())  # an end of text or of a turn ends the sequence
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    sequences = []
    for p, (ids, limit) in enumerate(zip(prompts, limits)):
        for i in range(body.n):
            index = p * body.n + i
            seed = None if body.seed is None else (body.seed + i) % 2**63  # n choices differ, each reproducible
            on_event = _to_loop(loop, events, index)
            sequences.append(Sequence(ids, sampling_params(body, limit, stops, seed, chat, bias), on_event, stop_ids))
    try:
        s.engine.submit(sequences)
    except QueueFull as e:
        raise ApiError(429, str(e), code="queue_full", headers={"Retry-After": RETRY_AFTER}) from None
    except EngineFailed as e:
        raise ApiError(503, str(e)) from None
    except UserError as e:
        raise ApiError(400, str(e)) from None
    echo = [tokenizer.decode(seq.prompt) for seq in sequences] if not chat and body.echo else None
    reply = Reply(s, chat, body, sum(len(ids) for ids in prompts), echo)
    if body.stream:
        return StreamingResponse(stream_events(request, sequences, events, reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await collect_events(request, sequences, events, reply)


def _to_loop(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int) -> Callable[[Event], None]:
    """The on_event of a sequence: hand (index, event) from the worker thread to the event loop."""
    return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))


HUNG_UP, TIMED_OUT = "hung up", "timed out"


async def next_event(request: Request, events: asyncio.Queue, deadline: float | None):
    """The next (index, event); HUNG_UP when the client has gone, TIMED_OUT when the request's
    deadline has passed by DEADLINE_GRACE and the engine has still not ended it (it is stuck)."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), DISCONNECT_POLL)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                return HUNG_UP
            if deadline is not None and time.monotonic() > deadline + DEADLINE_GRACE:
                return TIMED_OUT


def deadline_of(sequences: list[Sequence]) -> float | None:
    return None if sequences[0].deadline is None else max(seq.deadline for seq in sequences)


async def collect_events(request: Request, sequences: list[Sequence], events: asyncio.Queue, reply: "Reply"):
    reasons: list[str | None] = [None] * len(sequences)
    errors = []
    try:
        while None in reasons:
            got = await next_event(request, events, deadline_of(sequences))
            if got == HUNG_UP:
                return JSONResponse({}, status_code=499)  # nobody reads it
            if got == TIMED_OUT:  # the text so far, ended as the engine ends a request out of time
                reasons = [reason or "length" for reason in reasons]
                break
            index, event = got
            reply.add(index, sequences[index], event)
            reasons[index] = event.finish_reason
            errors += [event.error] if event.error else []
    finally:
        for seq in sequences:
            seq.cancel()  # a no-op for finished ones; stops the rest when the client is gone
    if errors:
        raise ApiError(500, errors[0], code="generation_failed")
    if "cancelled" in reasons:
        raise ApiError(503, "the server is shutting down", headers={"Retry-After": RETRY_AFTER})
    return reply.whole(reasons, sequences)


async def stream_events(request: Request, sequences: list[Sequence], events: asyncio.Queue, reply: "Reply"):
    """Server-sent events: a chunk per event (chat's first one carries the role), then [DONE]."""
    try:
        if reply.chat:
            for index in range(len(sequences)):
                yield sse(reply.chunk(index, {"role": "assistant", "content": ""}, None))
        open_ = set(range(len(sequences)))
        while open_:
            got = await next_event(request, events, deadline_of(sequences))
            if got == HUNG_UP:
                return
            if got == TIMED_OUT:  # as the engine ends a request out of time
                for index in sorted(open_):
                    yield sse(reply.chunk(index, {} if reply.chat else "", "length"))
                break
            index, event = got
            if event.finish_reason in ("cancelled", "error"):
                message, kind = (event.error, "server_error") if event.error else \
                    ("the server is shutting down", "service_unavailable")
                yield sse({"error": {"message": message, "type": kind, "param": None,
                                     "code": "generation_failed" if event.error else None}})  # fmt: skip
                break
            text, entries, offset = reply.add(index, sequences[index], event)
            logprobs = reply.shape_logprobs(entries, offset) if reply.with_logprobs else None
            if text or logprobs or event.finish_reason:
                content = {"content": text} if text else {}
                yield sse(reply.chunk(index, content if reply.chat else text, event.finish_reason, logprobs))
            if event.finish_reason is not None:
                open_.discard(index)
        if reply.include_usage:
            yield sse(reply.usage_chunk(sequences))
        yield "data: [DONE]\n\n"
    finally:
        for seq in sequences:
            seq.cancel()  # the client hung up (the generator is closed) or we are done: a no-op then


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Reply:
    """OpenAI's response and chunk shapes for one request, and each choice's text and
    log-probabilities as they come (a completion's echoed prompt first)."""

    def __init__(self, s: Served, chat: bool, body: Sampling, prompt_tokens: int, echo: list[str] | None):
        self.chat, self.model, self.prompt_tokens = chat, s.model_id, prompt_tokens
        self.tokenizer = s.loaded.tokenizer
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.with_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
        self.echo = echo  # per choice: the prompt's text, given back before the new text
        self.texts: dict[int, str] = {}
        self.logprobs: dict[int, list] = {}

    def add(self, index: int, seq: Sequence, event: Event) -> tuple[str, list, int]:
        """Take an event of choice `index`: (its text, its TokenLogprobs, where that text starts in the choice's)."""
        text, entries = event.text, list(event.logprobs)
        if index not in self.texts:  # the choice's first event: the echoed prompt goes before it
            self.texts[index], self.logprobs[index] = "", []
            if self.echo is not None:
                text, entries = self.echo[index] + text, (seq.prompt_logprobs or []) + entries
        offset = len(self.texts[index])
        self.texts[index] += text
        self.logprobs[index] += entries
        return text, entries, offset

    def shape_logprobs(self, entries: list, offset: int) -> dict:
        """TokenLogprobs in OpenAI's shape: chat's {"content": [...]}, or completions' four lists."""
        def piece(token: int) -> tuple[str, bytes]:
            """A token's text; where its bytes are part of a character, OpenAI's "bytes:\\xe2\\x80"."""
            data = self.tokenizer.decode_bytes([token])
            try:
                return data.decode("utf-8"), data
            except UnicodeDecodeError:
                return "bytes:" + "".join(f"\\x{b:02x}" for b in data), data

        if self.chat:
            def item(token: int, logprob: float) -> dict:
                text, data = piece(token)
                return {"token": text, "logprob": logprob, "bytes": list(data)}

            return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                                for e in entries]}  # fmt: skip
        tokens, offsets = [], []
        for e in entries:
            text, data = piece(e.token)
            tokens.append(text)
            offsets.append(offset)
            offset += len(data.decode("utf-8", errors="replace"))
        top = [None if e.logprob is None else {piece(t)[0]: lp for t, lp in [*e.top, (e.token, e.logprob)]}
               for e in entries]  # fmt: skip  (the chosen token is always among them, as OpenAI gives it)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries], "top_logprobs": top,
                "text_offset": offsets}  # fmt: skip

    def usage(self, sequences: list[Sequence]) -> dict:
        completion = sum(len(seq.tokens) for seq in sequences)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}  # fmt: skip

    def head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    def whole(self, reasons: list[str], sequences: list[Sequence]) -> dict:
        choices = []
        for i, reason in enumerate(reasons):
            text = self.texts.get(i, "")
            logprobs = self.shape_logprobs(self.logprobs.get(i, []), 0) if self.with_logprobs else None
            content = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
            choices.append({"index": i, **content, "logprobs": logprobs, "finish_reason": reason})
        return {**self.head("chat.completion" if self.chat else "text_completion"), "choices": choices,
                "usage": self.usage(sequences)}  # fmt: skip

    def chunk(self, index: int, delta, finish_reason: str | None, logprobs: dict | None = None) -> dict:
        choice = {"index": index, "delta": delta} if self.chat else {"index": index, "text": delta}
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        out = {**self.head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, sequences: list[Sequence]) -> dict:
        return {**self.head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": self.usage(sequences)}  # fmt: skip


# ---- the model card and /v1/models ---------------------------------------------------------------


def model_entry(s: Served) -> dict:
    """OpenAI's model object; a classifier's has its class names too (in label order)."""
    entry = {"id": s.model_id, "object": "model", "created": s.created, "owned_by": "gpt2-toolkit",
             "max_model_len": s.block_size}  # fmt: skip
    if s.classifier is not None:
        entry["classes"] = s.classifier.names
    return entry


def card(s: Served) -> dict:
    """What the page shows about the model: shape, size, tokenizer, training and its curves."""
    loaded, tokenizer = s.loaded, s.loaded.tokenizer
    c = loaded.model.config
    architecture = {**dataclasses.asdict(c), "kv_heads": c.kv_heads, "head_size": c.head_size,
                    "positions": "rope" if c.rope else "learned", "mlp_size": c.mlp_size}  # fmt: skip
    names = {regex: name for name, regex in PATTERNS.items()}
    return {
        "id": s.model_id,
        "source": loaded.source,
        "classes": loaded.classes,  # a classifier's class names (the page then classifies); None for a language model
        "architecture": architecture,
        "parameters": loaded.model.num_parameters(),
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "pattern": names.get(tokenizer.pattern, tokenizer.pattern),
                      "special_tokens": list(tokenizer.special_tokens)},
        # The model's own template (None for a base model), and the one /v1/chat/completions uses.
        "chat_template": s.chat[2] if loaded.chat_template is not None else None,
        "chat_served_with": s.chat[2],
        "training": training_state(loaded),
        "metrics": training_curves(loaded),
    }


def training_state(loaded) -> dict | None:
    state = loaded.checkpoint.get("state") if loaded.source == "checkpoint" else None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return None
    best = state.get("best_val_loss")
    best = float(best) if isinstance(best, (int, float)) and math.isfinite(best) else None
    tokens = state.get("tokens_seen")
    return {"step": state["step"], "best_val_loss": best, "tokens": tokens if isinstance(tokens, int) else None}


def training_curves(loaded) -> dict | None:
    """The loss curves of the checkpoint's metrics log (NAME.metrics.jsonl beside NAME.pt, or beside
    NAME.pt for NAME.best.pt), at most METRICS_POINTS points each; None without a log."""
    from ..plot import read_metrics

    if loaded.source != "checkpoint":
        return None
    path = Path(loaded.path)
    stem = path.name[: -len(".best.pt")] if path.name.endswith(".best.pt") else path.stem
    log_file = path.with_name(stem + ".metrics.jsonl")
    try:
        series = read_metrics(log_file)
    except UserError:
        return None
    train, evals = series["train"], series["eval"]
    return {"train": {"step": thin(train.get("step", [])), "loss": thin(train.get("loss", []))},
            "eval": {"step": thin(evals.get("step", [])), "val_loss": thin(evals.get("val_loss", []))}}


def thin(values: list) -> list:
    """At most METRICS_POINTS values, evenly spaced, the first and the last kept."""
    if len(values) <= METRICS_POINTS:
        return list(values)
    last = len(values) - 1
    return [values[round(i * last / (METRICS_POINTS - 1))] for i in range(METRICS_POINTS)]


# ---- metrics -------------------------------------------------------------------------------------


class LimitBody:
    """ASGI middleware: a request body over max_body bytes is answered 413 before the app reads it.
    A declared Content-Length is checked before one byte of the body is read; a body sent without
    one (chunked) is read up to the limit, then refused, or handed on as it came."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await send_error(send, ApiError(400, "the Content-Length header is not a number"))
            if int(length) > self.max_body:
                return await send_error(send, self.too_large(int(length)))
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:  # no declared length: read (at most max_body bytes), then replay
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body:
                return await send_error(send, self.too_large(size, at_least=True))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)

    def too_large(self, size: int, at_least: bool = False) -> ApiError:
        return ApiError(413, f"the request body has {'more than ' if at_least else ''}{size:,} bytes; this server "
                             f"takes at most {self.max_body:,} (--max-body)", code="body_too_large")  # fmt: skip


async def send_error(send, error: ApiError) -> None:
    """An ApiError straight through ASGI (from a middleware, outside FastAPI's handlers)."""
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class CountRequests:
    """ASGI middleware: count each response by route and status code (for /metrics)."""

    def __init__(self, app, counts: Counter, paths: set[str]):
        self.app, self.counts, self.paths = app, counts, paths  # other paths count as "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.paths else "other"

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.counts[(path, message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counted_send)


def prometheus_text(s: Served | None, requests_total: Counter) -> str:
    """The counters in Prometheus' text format (version 0.0.4)."""
    lines = ["# HELP gpt2_requests_total HTTP requests answered, by path and status code.",
             "# TYPE gpt2_requests_total counter"]
    for (path, status), count in sorted(requests_total.items()):
        lines.append(f'gpt2_requests_total{{path="{_label(path)}",code="{status}"}} {count}')
    if s is not None and s.classifier is not None:
        c = s.classifier
        for name, help_text, kind, value in (
                ("gpt2_queue_length", "Classify requests waiting or being classified.", "gauge", c.waiting),
                ("gpt2_prompt_tokens_total", "Tokens of the texts classified.", "counter", c.tokens),
                ("gpt2_classified_texts_total", "Texts classified.", "counter", c.texts)):  # fmt: skip
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    elif s is not None:
        e, st = s.engine, s.engine.stats
        gauges = [("gpt2_queue_length", "Sequences waiting to join the batch.", "gauge", e.queue_length),
                  ("gpt2_active_sequences", "Sequences in the batch being decoded.", "gauge", e.active_count),
                  ("gpt2_prompt_tokens_total", "Prompt tokens read (prefill).", "counter", st.prompt_tokens),
                  ("gpt2_generated_tokens_total", "Tokens generated.", "counter", st.generated_tokens),
                  ("gpt2_decode_steps_total", "Batched decode steps.", "counter", st.steps),
                  ("gpt2_tokens_per_second", "Tokens generated per second over the last 10 s.", "gauge",
                   round(st.tokens_per_second(), 3))]  # fmt: skip
        for name, help_text, kind, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        if e.prefix is not None:
            lines += [f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name} {value}" for name, help_text, kind, value in (
                ("gpt2_prefix_cache_hits_total", "Prompts that reused a cached beginning.", "counter", e.prefix.hits),
                ("gpt2_prefix_cache_reused_tokens_total", "Prompt tokens not read again.", "counter",
                 e.prefix.reused_tokens),
                ("gpt2_prefix_cache_bytes", "Bytes of keys and values kept for reuse.", "gauge", e.prefix.bytes))]  # fmt: skip
        lines += ["# HELP gpt2_finished_sequences_total Sequences finished, by reason.",
                  "# TYPE gpt2_finished_sequences_total counter"]
        lines += [f'gpt2_finished_sequences_total{{reason="{r}"}} {n}' for r, n in sorted(st.finished.items())]
        lines += ["# HELP gpt2_time_to_first_token_seconds From a request's arrival to its first token.",
                  "# TYPE gpt2_time_to_first_token_seconds histogram"]
        for bound, count in zip(TTFT_BUCKETS, st.ttft_buckets):
            le = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'gpt2_time_to_first_token_seconds_bucket{{le="{le}"}} {count}')
        lines += [f"gpt2_time_to_first_token_seconds_sum {st.ttft_sum:.6f}",
                  f"gpt2_time_to_first_token_seconds_count {st.ttft_count}"]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
