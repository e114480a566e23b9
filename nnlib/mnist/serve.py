"""``nnlib serve``: draw a digit in a browser and watch the network read it.

A Starlette app on uvicorn (the optional ``serve`` extra). The model is loaded once, by ``nnlib predict``'s
loader; each picture goes through ``nnlib predict``'s reader and MNIST preprocessing
(:func:`nnlib.mnist.images.read_image`, :func:`nnlib.mnist.images.preprocess_many`), so the page shows
exactly what ``nnlib predict`` would answer for the same file.

Routes (docs/serve.md):

==========================  ===========================================================================
``GET /``                   the page (``static/index.html``, its ``app.js`` and ``style.css``)
``POST /api/predict``       a PNG/JPEG/BMP/GIF body, or a multipart upload with one file -> digit,
                            probabilities, the 28x28 input and the first layer's maps
``POST /api/drawn``         JSON ``{"label": 0-9, "image": PNG as base64 or a data: URL}`` -> saved
``GET /api/model``          the model card
``GET /healthz``            ``{"ok": true}``
==========================  ===========================================================================

Decoding and preprocessing run in ``DECODERS`` worker processes (:class:`Decoders`: most of
preprocessing is small NumPy steps that hold the GIL, so threads could not run two at once; the number
of processes bounds the memory that large pictures take); inference runs in one thread of its own, which
takes every image waiting when it is free and runs them as one batch (micro-batching). The event loop
only moves bytes.
Every error reaches the client as ``{"error": "one line"}`` with a 4xx status, or a 500 without details.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import multiprocessing
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from threadpoolctl import threadpool_limits

from nnlib.backend import to_numpy
from nnlib.committee import Committee, first_network
from nnlib.errors import InputError, MissingExtra, ParamsError
from nnlib.files import file_sha256
from nnlib.functional import softmax
from nnlib.mnist import drawn
from nnlib.mnist.data.stream import to_batch
from nnlib.mnist.images import READ_ERRORS, preprocess_many, read_image

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    import anyio
except ImportError:  # the serve extra is missing: build_app says so
    Starlette = None

MAX_BODY = 2 * 1024 * 1024  # bytes of a request body at most (413 beyond)
BODY_S = 30.0  # seconds a request body may take to arrive (408 beyond)
MAX_SIDE = 4096  # pixels a side of a picture at most, checked from its header before it is decoded
MAX_DRAWN_SIDE = 2048  # a saved drawing is at most this wide and high
MAX_BATCH = 64  # images per forward pass of the inference thread
GATHER_S = 0.004  # how long the inference thread waits for images being decoded to join its batch
MAX_MAPS = 32  # feature maps returned at most
DECODERS = 2  # worker processes that decode and preprocess pictures (so, pictures at once)
CLOSE_S = 5.0  # seconds the workers get to end at shutdown before they are killed
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP": "BMP", "GIF": "GIF"}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif")
STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
INSTALL = 'pip install -e ".[serve]"'


class BadRequest(Exception):
    """A client error: ``status`` and a one-line ``message`` for the JSON answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- pictures -----------------------------------------------------------------------------------------

def check_picture(data: bytes, formats=tuple(FORMATS)) -> Image.Image:
    """Open a picture's header and refuse, before decoding it, what the server does not take.

    Empty, not an image of ``formats``, wider or higher than ``MAX_SIDE`` pixels, animated: BadRequest.
    """
    if not data:
        raise BadRequest("empty body: send a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        raise BadRequest(f"not an image of a format this server reads ({', '.join(formats)})") from None
    except Image.DecompressionBombError:
        raise BadRequest(f"image too large: at most {MAX_SIDE}x{MAX_SIDE} pixels") from None
    except READ_ERRORS as err:
        raise BadRequest(f"cannot read the image ({one_line(err)})") from None
    width, height = image.size
    if width > MAX_SIDE or height > MAX_SIDE:  # a 16,777,216 x 1 strip costs seconds and gigabytes to preprocess
        raise BadRequest(f"image of {width}x{height} pixels: at most {MAX_SIDE}x{MAX_SIDE}")
    if width < 1 or height < 1:
        raise BadRequest("image without pixels")
    try:
        frames = getattr(image, "n_frames", 1)
    except READ_ERRORS as err:
        raise BadRequest(f"cannot read the image ({one_line(err)})") from None
    if frames > 1 or getattr(image, "is_animated", False):
        raise BadRequest(f"animated image ({frames} frames): send a single picture")
    return image


def preprocess_picture(data: bytes) -> np.ndarray:
    """Picture bytes -> uint8 (28, 28), white on black: ``nnlib predict``'s reader and preprocessing."""
    check_picture(data)
    try:
        picture = read_image(io.BytesIO(data))  # what nnlib predict does with a file of these bytes
    except READ_ERRORS as err:
        raise BadRequest(f"cannot read the image ({one_line(err)})") from None
    (digit,) = preprocess_many([picture.gray])
    if isinstance(digit, ValueError):
        raise BadRequest(f"{digit}: draw a digit")
    return digit


def _preprocess_in_worker(data: bytes) -> tuple[np.ndarray | None, str, int]:
    """:func:`preprocess_picture` in a :class:`Decoders` process -> (digit, "", 0), or (None, message,
    status) for a picture refused with BadRequest (any other error is raised, and answered 500)."""
    try:
        return preprocess_picture(data), "", 0
    except BadRequest as err:
        return None, str(err), err.status


def _start_worker() -> None:
    """A :class:`Decoders` process ignores Ctrl-C (the server's shutdown stops it) and uses one BLAS thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored meanwhile, when called in the main thread, so that processes started now ignore it
    from their first instruction (the setting is inherited; a handler set later would leave their imports
    exposed to a Ctrl-C). Elsewhere (a test client's thread) nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Decoders:
    """``workers`` processes that run :func:`preprocess_picture` on request bodies.

    Processes, not threads: preprocessing a canvas takes about 2.5 ms, of which only the PNG decoding
    releases the GIL, so two threads did 1.24 times the work of one and two processes do twice that.
    They start with the server (spawned, so they hold no copy of its threads or locks), ignoring Ctrl-C,
    which reaches the whole process group: the server's shutdown stops them. When a worker dies (killed,
    out of memory), the pictures it held or had queued are tried once more on new ones (:meth:`preprocess`).
    """

    def __init__(self, workers: int = DECODERS, job=_preprocess_in_worker):
        self.workers, self.job = workers, job  # job(bytes) -> (digit, message, status), run in a worker
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> ProcessPoolExecutor:
        """The running pool; when there is none, start one with all its processes at once. It does not wait
        for their imports (requests that come meanwhile queue for them), so that the server's start-up, in
        which a Ctrl-C makes uvicorn log a traceback, stays as short as spawning."""
        with self._lock:
            if self._pool is None:
                with _sigint_ignored():  # the processes start in submit(), in this thread
                    pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_start_worker)
                    for _ in range(self.workers):  # a process for each: no worker is idle yet
                        pool.submit(_start_worker)
                self._pool = pool
            return self._pool

    async def preprocess(self, data: bytes) -> np.ndarray:
        """Picture bytes -> uint8 (28, 28), as :func:`preprocess_picture`; BadRequest as it raises.

        When the workers stop under it (one was killed, ran out of memory), the picture is tried once more
        on new ones (it was maybe only queued behind the one that failed); a second failure is a 500."""
        for _ in range(2):
            pool = self.start()
            try:
                digit, message, status = await asyncio.wrap_future(pool.submit(self.job, data))
                break
            except BrokenProcessPool:
                await anyio.to_thread.run_sync(self._replace, pool)  # it may wait CLOSE_S: not on the event loop
        else:
            raise BadRequest("a preprocessing process stopped twice on this picture (see the server's log)", 500)
        if digit is None:
            raise BadRequest(message, status)
        return digit

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        """Drop a broken pool (the next :meth:`start` makes a new one), saying so once on stderr."""
        with self._lock:
            if self._pool is not pool:  # another request saw it first
                return
            self._pool = None
        print("serve: a preprocessing process stopped (killed, or out of memory?): starting new ones",
              file=sys.stderr, flush=True)
        self._stop(pool)

    def pids(self) -> list[int]:
        """The process ids of the running workers (none before :meth:`start` and after :meth:`close`)."""
        with self._lock:
            return sorted(_processes(self._pool))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            self._stop(pool)

    @staticmethod
    def _stop(pool: ProcessPoolExecutor) -> None:
        """Shut ``pool`` down: its processes get ``CLOSE_S`` seconds to end, then are killed (a stuck or
        stopped worker must not keep the server from exiting)."""
        processes = list(_processes(pool).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + CLOSE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(1)


def _processes(pool: ProcessPoolExecutor | None) -> dict:
    """pid -> multiprocessing.Process of a pool's workers ({} for none). ProcessPoolExecutor keeps them in a
    private attribute: the only way to wait for them with a time limit, and to kill a stuck one."""
    return getattr(pool, "_processes", None) or {}


def check_drawing(data: bytes) -> None:
    """A drawing to save: a PNG that decodes completely, at most MAX_DRAWN_SIDE on each side."""
    image = check_picture(data, formats=("PNG",))
    if max(image.size) > MAX_DRAWN_SIDE:
        raise BadRequest(f"drawing of {image.size[0]}x{image.size[1]} pixels: at most {MAX_DRAWN_SIDE} on each side")
    try:
        image.load()
    except READ_ERRORS as err:
        raise BadRequest(f"cannot read the image ({one_line(err)})") from None


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --- the network ---------------------------------------------------------------------------------------

@dataclass
class Reading:
    """What the network made of one image: probabilities float64 (10,), maps uint8 (M, h, w), units (M,) or None."""

    probabilities: np.ndarray
    maps: np.ndarray
    activations: np.ndarray | None


class Network:
    """The model and what the page shows of its inside: the first conv layer's maps (after the batch norm
    and activation that follow it), or for a network whose first weight layer is dense, the weights of
    that layer's most active units as images. A committee answers with its averaged probabilities and
    shows its first member's inside (:func:`nnlib.committee.first_network`)."""

    def __init__(self, model):
        self.model = model
        self.network = first_network(model)
        layers = self.network.layers
        first = next((i for i, layer in enumerate(layers) if layer.type_name in ("conv", "dense")), None)
        self.first = layers[first] if first is not None else None
        self.kind = self.first.type_name if self.first is not None else None
        after = []
        for layer in layers[first + 1:] if first is not None else []:
            if layer.type_name not in ("batchnorm", "relu", "sigmoid", "tanh"):
                break
            after.append(layer)
        self.after = after
        self.describe = (f"first {self.kind} layer" + "".join(f" -> {layer.type_name}" for layer in after)
                         if self.first is not None else "no conv or dense layer")
        if isinstance(model, Committee):
            self.describe += f" of the committee's first member (of {len(model)})"

    def read(self, images: np.ndarray) -> list[Reading]:
        """uint8 images (N, 28, 28) -> one Reading each. The forward pass is the model's own
        (``Sequential.forward`` in eval mode), as in :func:`nnlib.mnist.predict.probabilities`; a committee's
        first member runs here, the others through their own ``predict_logits``."""
        x = batch = to_batch(images)
        captured = None
        for unit in self.network.layers_in_run_order:
            x = unit.forward(x, train=False)
            if unit is self.first:
                captured = to_numpy(x).copy()  # later units may work in place
        if isinstance(self.model, Committee):
            rest = [to_numpy(member.predict_logits(batch, len(batch))) for member in self.model.members[1:]]
            probs = self.model.combine([to_numpy(x), *rest])
        else:
            probs = softmax(to_numpy(x).astype(np.float64), axis=1)
        if captured is None:
            return [Reading(p, np.zeros((0, 1, 1), np.uint8), None) for p in probs]
        for layer in self.after:
            captured = to_numpy(layer.forward(captured, train=False))
        if self.kind == "conv":
            return [Reading(p, self._conv_maps(c), None) for p, c in zip(probs, captured)]
        return [Reading(p, *self._dense_units(c)) for p, c in zip(probs, captured)]

    @staticmethod
    def _conv_maps(maps: np.ndarray) -> np.ndarray:
        maps = maps[:MAX_MAPS].astype(np.float32)
        low = min(float(maps.min()), 0.0)
        scale = max(float(maps.max()) - low, 1e-12)
        return np.rint((maps - low) * (255 / scale)).astype(np.uint8)

    def _dense_units(self, activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, h, w = self.model.input_shape
        order = np.argsort(-activations, kind="stable")[:MAX_MAPS // 2]
        weights = to_numpy(self.first.params["W"])[:, order].T  # (M, C*H*W)
        units = np.stack([order.astype(np.float64), activations[order].astype(np.float64)])  # (2, M): unit, activation
        if weights.shape[1] != c * h * w:  # not a dense layer on the pixels: the units' activations only
            return np.zeros((0, 1, 1), np.uint8), units
        images = weights.reshape(-1, c, h, w).mean(axis=1)
        bound = np.abs(images).max(axis=(1, 2), keepdims=True)
        images = 127.5 + 127.5 * images / np.where(bound > 0, bound, 1)
        return np.rint(images).astype(np.uint8), units


class Batcher:
    """One inference thread: it takes every image waiting (up to ``MAX_BATCH``) and reads them in one pass.

    While other images are being decoded for it (:meth:`coming`), it waits up to ``GATHER_S`` for them
    to join the batch: under load, forward passes are shared; a lone request never waits.
    """

    def __init__(self, network: Network, max_batch: int = MAX_BATCH):
        self.network, self.max_batch = network, max_batch
        self.queue: queue.Queue = queue.Queue()
        self._coming = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="nnlib-serve-inference", daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def coming(self):
        """Around the decoding of an image that will be submitted (submit it inside the block)."""
        with self._lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._lock:
                self._coming -= 1

    def submit(self, image: np.ndarray) -> "asyncio.Future":
        """Queue a uint8 (28, 28) image -> a future of its Reading (on the running event loop)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put((image, future, loop))
        return future

    async def read(self, image: np.ndarray) -> Reading:
        return await self.submit(image)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _gather(self, first) -> tuple[list, bool]:
        """The batch that starts with ``first``: what is queued, then what arrives within GATHER_S
        while images are still being decoded. Returns (items, whether close() was asked)."""
        items, deadline = [first], time.monotonic() + GATHER_S
        while len(items) < self.max_batch:
            try:
                nxt = self.queue.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if self._coming == 0 or wait <= 0:
                    break
                try:
                    nxt = self.queue.get(timeout=wait)
                except queue.Empty:
                    break
            if nxt is None:
                return items, True
            items.append(nxt)
        return items, False

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self.queue.get()
            if item is None:
                return
            items, stop = self._gather(item)
            try:
                readings = self.network.read(np.stack([image for image, _, _ in items]))
                answers = [(r, None) for r in readings]
            except Exception as err:  # noqa: BLE001 - handed to the requests, which answer 500
                answers = [(None, err)] * len(items)
            by_loop: dict = {}  # one wake-up of each event loop for the whole batch
            for (_, future, loop), (reading, err) in zip(items, answers):
                by_loop.setdefault(loop, []).append((future, reading, err))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list) -> None:
    """Hand each (future, reading, error) its answer, on the future's event loop."""
    for future, reading, err in settled:
        if future.done():
            continue
        if err is not None:
            future.set_exception(err)
        else:
            future.set_result(reading)


# --- the model card -----------------------------------------------------------------------------------

def _matches(recipe, recorded) -> bool:
    """Whether every value a preset sets is the value recorded (dicts: key by key; lists: item by item)."""
    if isinstance(recipe, dict):
        return isinstance(recorded, dict) and all(_matches(v, recorded.get(k)) for k, v in recipe.items())
    if isinstance(recipe, list):
        return isinstance(recorded, list) and len(recipe) == len(recorded) and all(map(_matches, recipe, recorded))
    if isinstance(recipe, (int, float)) and not isinstance(recipe, bool) and isinstance(recorded, (int, float)):
        return float(recipe) == float(recorded)
    return recipe == recorded


def guess_preset(train: dict | None) -> str | None:
    """The preset whose training recipe the model's recorded ``train`` params follow (the most specific
    when several do), or None. Model files record the effective params, not the preset's name."""
    from nnlib.mnist.config import presets  # noqa: PLC0415

    if not isinstance(train, dict):
        return None
    found = []
    for name in presets.names():
        recipe = presets.load(name).get("train") or {}
        if recipe.get("model") is not None and _matches(recipe, train):
            found.append((len(json.dumps(recipe)), name))
    return max(found)[1] if found else None


class Card:
    """What ``GET /api/model`` answers: fixed facts of the file, and its test accuracy read from
    ``eval_json`` at each call (``nnlib info``'s check: only when that file scored this very model)."""

    def __init__(self, path: Path, model, meta: dict, eval_json: Path, network: Network):
        from nnlib.mnist.summary import layer_table  # noqa: PLC0415

        self.eval_json = eval_json
        self.sha256 = file_sha256(path)
        layers = layer_table(first_network(model))
        self.fixed = {
            "file": path.name, "sha256": self.sha256, "preset": guess_preset(meta.get("train")),
            "seed": meta.get("seed"), "epoch": meta.get("epoch"), "val_accuracy": meta.get("val_accuracy"),
            "parameters": model.num_parameters(),
            "layers": [row["type"] for row in layers], "maps": network.describe,
        }
        if isinstance(model, Committee):  # the members' seeds; the layers are the first member's
            records = meta.get("members") or [{}] * len(model)
            self.fixed.update(members=len(model), seed=[record.get("seed") for record in records])

    def answer(self) -> dict:
        from nnlib.mnist.summary import scored_accuracy  # noqa: PLC0415

        try:
            accuracy, source = scored_accuracy(self.eval_json, self.sha256)
        except InputError:
            accuracy, source = None, f"not evaluated ({self.eval_json.name} is not a valid evaluation record)"
        return {**self.fixed, "test_accuracy": accuracy, "test_accuracy_source": source}


# --- the app --------------------------------------------------------------------------------------------

def _error(status: int, message: str) -> "JSONResponse":
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


async def read_body(request: "Request", limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (by its Content-Length, or while it arrives),
    and with 408 when it has not all arrived within ``BODY_S`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("malformed Content-Length")
        if int(declared) > limit:
            raise BadRequest(f"body of {int(declared):,} bytes: at most {limit:,}", 413)
    chunks, size = [], 0
    with anyio.move_on_after(BODY_S) as waited:  # a client that stalls must not hold its half body for ever
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"body over {limit:,} bytes", 413)
            chunks.append(chunk)
    if waited.cancelled_caught:
        raise BadRequest(f"the body did not arrive within {BODY_S:g} s", 408)
    return b"".join(chunks)


def media_type(request: "Request") -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def upload_bytes(request: "Request") -> bytes:
    """The picture of a predict request: the body itself, or the one file of a multipart form."""
    kind = media_type(request)
    if kind not in (*IMAGE_TYPES, "multipart/form-data"):
        raise BadRequest(f"content type {kind or '(none)'!r}: send {', '.join(IMAGE_TYPES)} or multipart/form-data")
    body = await read_body(request)
    if kind != "multipart/form-data":
        return body

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=4,
                                     max_part_size=MAX_BODY).parse()
    except MultiPartException as err:
        raise BadRequest(f"malformed multipart form ({one_line(err)})") from None
    try:
        files = [value for _, value in form.multi_items() if not isinstance(value, str)]
        if len(files) != 1:
            raise BadRequest(f"a multipart form must hold one file, got {len(files)}")
        return await files[0].read()
    finally:
        await form.close()


def build_app(model, meta: dict, model_path, *, eval_json="metrics/eval.json", drawn_dir=drawn.DEFAULT_FOLDER,
              drawn_cap: int = drawn.CAP):
    """The Starlette app around a loaded model (``nnlib serve`` runs it; tests drive it with TestClient)."""
    if Starlette is None:
        raise MissingExtra(f"nnlib serve needs the serve extra: {INSTALL}")
    network = Network(model)
    card = Card(Path(model_path), model, meta, Path(eval_json), network)
    drawn_dir = Path(drawn_dir)
    pages = {route: ((STATIC / name).read_bytes(), kind) for route, (name, kind) in PAGES.items()}
    drawing_checks = anyio.CapacityLimiter(DECODERS)
    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["decoders"] = app.state.decoders = Decoders()
        state["batcher"] = Batcher(network)
        try:
            state["decoders"].start()
            yield
        finally:
            state.pop("batcher").close()
            await anyio.to_thread.run_sync(state.pop("decoders").close)

    async def page(request: Request) -> Response:
        body, kind = pages[request.url.path]
        return Response(body, media_type=kind.split(";")[0], headers={**SECURITY_HEADERS, "Content-Type": kind})

    async def predict(request: Request) -> Response:
        data = await upload_bytes(request)
        batcher = state["batcher"]
        with batcher.coming():
            digit_image = await state["decoders"].preprocess(data)
            answer_soon = batcher.submit(digit_image)
        reading = await answer_soon
        probs = reading.probabilities
        maps = reading.maps
        answer = {
            "digit": int(np.argmax(probs)), "probability": float(probs.max()),
            "probabilities": [float(p) for p in probs],
            "input": digit_image.tolist(),
            "maps": {"kind": network.kind, "layers": network.describe, "count": int(maps.shape[0]),
                     "height": int(maps.shape[1]), "width": int(maps.shape[2]),
                     "data": base64.b64encode(maps.tobytes()).decode("ascii")},
        }
        if reading.activations is not None:
            answer["maps"]["units"] = [int(u) for u in reading.activations[0]]
            answer["maps"]["activations"] = [float(a) for a in reading.activations[1]]
        return JSONResponse(answer, headers=SECURITY_HEADERS)

    async def save_drawn(request: Request) -> Response:
        if media_type(request) != "application/json":
            raise BadRequest(f"content type {media_type(request) or '(none)'!r}: send application/json")
        body = await read_body(request)
        try:
            record = json.loads(body)
        except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, an integer of over 4,300 digits; nested too deep
            raise BadRequest("malformed JSON") from None
        if not isinstance(record, dict):
            raise BadRequest('expected a JSON object {"label": 0-9, "image": "<PNG as base64 or a data: URL>"}')
        label, image = record.get("label"), record.get("image")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise BadRequest(f"label must be an integer 0-9, got {json.dumps(label)[:40]}")
        if not isinstance(image, str):
            raise BadRequest("image must be a PNG as a base64 string or a data:image/png;base64 URL")
        prefix = "data:image/png;base64,"
        if image.startswith("data:"):
            if not image.startswith(prefix):
                raise BadRequest("image must be a data:image/png;base64 URL")
            image = image[len(prefix):]
        try:
            png = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("image is not valid base64") from None
        await anyio.to_thread.run_sync(check_drawing, png, limiter=drawing_checks)
        try:
            row = await anyio.to_thread.run_sync(drawn.save, drawn_dir, png, label, drawn_cap)
        except drawn.FolderFull as err:
            raise BadRequest(str(err), 507) from None
        except InputError as err:  # a corrupt labels.csv: the person running the server must look at it
            raise BadRequest(f"cannot save: {err}", 500) from None
        return JSONResponse({**row, "folder": f"{drawn_dir.name}/{drawn.DIGITS}"}, status_code=201, headers=SECURITY_HEADERS)

    async def model_card(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(card.answer), headers=SECURITY_HEADERS)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True}, headers=SECURITY_HEADERS)

    async def bad_request(request, err: BadRequest):
        return _error(err.status, str(err))

    async def http_error(request, err: HTTPException):
        return _error(err.status_code, err.detail if isinstance(err.detail, str) else "error")

    async def server_error(request, err: Exception):
        return _error(500, "internal error (see the server's log)")

    routes = [Route(path, page, methods=["GET"]) for path in PAGES]
    routes += [Route("/api/predict", predict, methods=["POST"]), Route("/api/drawn", save_drawn, methods=["POST"]),
               Route("/api/model", model_card, methods=["GET"]), Route("/healthz", healthz, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        BadRequest: bad_request, HTTPException: http_error, Exception: server_error})


def check_address(host: str, port: int) -> None:
    """ParamsError (one line, exit 2) when ``host:port`` cannot be listened on (in use, not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as err:
        raise ParamsError(f"cannot listen on {host}:{port} ({err.strerror or err}): choose another --port "
                          "or --host") from None


def exposure_warning(host: str) -> str | None:
    """The one-line warning for an address other machines can reach (None for loopback)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"warning: listening on {host}: the page and its API are open to every machine that can reach "
            "this one (no login, no TLS); the default --host 127.0.0.1 keeps it to this machine")


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, *, drawn_dir=drawn.DEFAULT_FOLDER,
          eval_json="metrics/eval.json", log=print) -> None:
    """Load the model (``nnlib predict``'s loader: a bad file raises ModelFileError here), then serve
    until Ctrl-C or SIGTERM, which uvicorn turns into a clean shutdown and then re-raises."""
    try:
        import uvicorn  # noqa: PLC0415
    except ImportError:
        uvicorn = None
    if uvicorn is None or Starlette is None:
        raise MissingExtra(f"nnlib serve needs the serve extra: {INSTALL}")
    from nnlib.modelfile import check_outputs, load_model  # noqa: PLC0415

    model, meta = load_model(model_path)
    check_outputs(model, model_path)  # finite weights that overflow: refused before the server starts, as predict does
    check_address(host, port)
    app = build_app(model, meta, model_path, eval_json=eval_json, drawn_dir=drawn_dir)
    warning = exposure_warning(host)
    if warning:
        log(warning)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            server_header=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    log(f"serve: {model_path} on http://{shown}:{port}/ (Ctrl-C stops it)")
    # One BLAS thread: requests run side by side in threads already, and OpenBLAS's spinning workers
    # only burn the CPU they compete for (bench/serve.json: less than half the CPU per request).
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            server.run()
        except SystemExit:
            if server.started:
                raise
            raise ParamsError(f"cannot listen on {host}:{port}: choose another --port or --host") from None
