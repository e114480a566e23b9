"""Replicas of a model in worker processes, fed through shared memory: the process side of data parallelism.

:class:`~nnlib.parallel.DataParallel` runs worker 0 on the model itself, in the calling thread, and
workers 1..W-1 either on threads of this process or, with this module, each in a process of its own.
Processes do not share Python's lock, and each has its own allocator and caches: on the 2-core machine
two processes run a half-batch each about 10% faster than two threads do (docs/threads.md).

Each worker process owns one *mailbox*, a block of shared memory without a name (``os.memfd_create``,
its descriptor handed over the socket), so that a killed training leaves nothing behind in /dev/shm. It
is laid out by :class:`Layout` on both sides:

    params    (P,)                the model's flat parameters, copied in before each forward
    grads     (P,)                the replica's gradients: its layers write them there in backward
    buffer<i> (F,)                BatchNorm i's running statistics: in before a forward, out after it
    x         (R, *input_shape)   the worker's rows of the batch
    out       (R, K)              its logits
    dy        (R, K)              d(loss)/d(its logits)
    drop<i>   (R, *shape)         the uniforms dropout layer i drew for its rows (float32)

The pipe carries only short commands and replies (``forward``/``backward`` with a row count, dtypes and
NumPy's error settings). The replica in a process computes exactly what a replica on a thread computes
(the same NumPy calls on the same values, BLAS at 1 thread), so a worker count gives the same bytes on
threads and on processes; the model's parameters, optimizer and running statistics live only in the
calling process, which is why checkpoints and resume are unchanged.

NumPy only: on a GPU the workers stay on threads. A worker follows the caller's NumPy error settings
(``np.errstate``), raising what they raise; a warning they ask for is printed by the worker to the shared
stderr, not passed through the caller's ``warnings`` filters (the training stage ignores them anyway).

If a command's exchange is cut short (Ctrl-C while the caller waits on a reply, a worker that died), the
worker is out of step with the caller: it is marked broken and every later call raises WorkerFailed
rather than read a reply meant for an earlier command.
"""
from __future__ import annotations

import functools
import math
import mmap
import os
import socket
import subprocess
import sys
import weakref
from multiprocessing.connection import Connection
from multiprocessing.reduction import recvfds, sendfds
from pathlib import Path

import numpy as np

from .errors import WorkerFailed

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding this nnlib: the workers import the same one
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # one BLAS thread per worker process
ALIGN = 64  # bytes: every region starts on a cache line
WIDEST = 8  # bytes per value reserved for x, out and dy, whose dtype is the caller's (float64 at most)
# The worker's command line: Ctrl-C is ignored from its first statement (the caller handles it and closes
# the workers). It runs in PACKAGE_ROOT, which ``python -c`` puts first on sys.path, so that the worker
# imports the nnlib of PACKAGE_ROOT (not one in the caller's folder), which its build reply names and the
# caller checks.
BOOT = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); from nnlib.processes import serve; serve({fd})"


class Layout:
    """Where each region of a mailbox lies: name -> (byte offset, byte size), for ``rows`` rows a worker.

    Built from the same description on both sides: ``sizes`` is [(name, bytes per row or None, fixed
    bytes)], in order; fixed regions (parameters, running statistics) have no per-row part.
    """

    def __init__(self, sizes: list[tuple[str, int, int]], rows: int):
        self.rows, self.regions, offset = rows, {}, 0
        for name, per_row, fixed in sizes:
            size = fixed + per_row * rows
            self.regions[name] = (offset, size)
            offset += -(-size // ALIGN) * ALIGN
        self.total = max(offset, ALIGN)

    def view(self, buffer, name: str, dtype, shape: tuple):
        """The region ``name`` of ``buffer`` as an array of ``dtype`` and ``shape`` (which must fit in it)."""
        offset, size = self.regions[name]
        count = math.prod(shape)
        if count * np.dtype(dtype).itemsize > size:
            raise ValueError(f"mailbox region {name!r} holds {size} bytes, not {shape} of {np.dtype(dtype)}")
        return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset)


def describe(model) -> dict:
    """What a worker process needs to rebuild ``model``'s replica and its mailbox: plain data only."""
    bn = [(i, key, value.shape, value.dtype.str) for i, layer in enumerate(model.layers)
          if type(layer).__name__ == "BatchNorm" for key, value in layer.buffers.items()]
    drop = [(i, tuple(model.input_shape if i == 0 else model.layer_shapes[i - 1]))
            for i, layer in enumerate(model.layers) if type(layer).__name__ == "Dropout" and layer.p > 0]
    return {"specs": model.specs(), "input_shape": tuple(model.input_shape), "output_shape": tuple(model.output_shape),
            "param_count": int(model.flat_params.size), "param_dtype": model.flat_params.dtype.str,
            "buffers": bn, "dropout": drop}


def region_sizes(info: dict) -> list[tuple[str, int, int]]:
    """The mailbox's regions for the model ``info`` (from :func:`describe`): (name, bytes a row, fixed bytes)."""
    itemsize = np.dtype(info["param_dtype"]).itemsize
    sizes = [("params", 0, info["param_count"] * itemsize), ("grads", 0, info["param_count"] * itemsize)]
    sizes += [(f"buffer{j}", 0, math.prod(shape) * np.dtype(dtype).itemsize)
              for j, (_, _, shape, dtype) in enumerate(info["buffers"])]
    sizes += [("x", math.prod(info["input_shape"]) * WIDEST, 0), ("out", math.prod(info["output_shape"]) * WIDEST, 0),
              ("dy", math.prod(info["output_shape"]) * WIDEST, 0)]
    sizes += [(f"drop{i}", math.prod(shape) * 4, 0) for i, shape in info["dropout"]]
    return sizes


class WorkerProcess:
    """One replica of a model in a process of its own, driven by :meth:`start_forward` / :meth:`finish_forward`
    and :meth:`start_backward` / :meth:`finish_backward`.

    Calls come in pairs: ``start_*`` hands the work over and returns at once, ``finish_*`` waits for it,
    so that the caller computes its own part meanwhile. The process is a fresh interpreter
    (``python -c``) that imports this nnlib and nothing of the caller's script, so a script without an
    ``if __name__ == "__main__"`` guard is safe; it ends when :meth:`close` is called or the caller exits.
    """

    def __init__(self, model, name: str):
        self.info, self.name = describe(model), name
        self.sizes = region_sizes(self.info)
        self.layout, self.memory, self.broken = None, None, False
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
                   **{variable: "1" for variable in BLAS_ENV})
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", BOOT.format(fd=theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, cwd=PACKAGE_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours  # the fds of new mailboxes go through it; the pipe is the same socket, for messages
        self.pipe = Connection(os.dup(ours.fileno()))
        self._finalizer = weakref.finalize(self, _shut, self.pipe, self.socket, self.process, [None])
        self._send(("build", self.info))  # answered in ready(), so that workers start side by side

    def ready(self) -> None:
        """Wait until the worker has built its replica (a failure there is raised here, in one line)."""
        _, root = self._reply()
        if root != str(PACKAGE_ROOT):
            self.broken = True
            raise WorkerFailed(f"{self.name} imported nnlib from another folder than the training's ({str(root)[:200]}); "
                               "run from a folder without an nnlib of its own, or set train.workers: 1")

    def _ensure_rows(self, rows: int) -> None:
        """A mailbox for at least ``rows`` rows: a new, larger one (the worker re-attaches) when needed."""
        if self.layout is not None and self.layout.rows >= rows:
            return
        layout = Layout(self.sizes, max(rows, 1))
        try:
            fd = os.memfd_create("nnlib-mailbox", os.MFD_CLOEXEC)
        except OSError as err:
            raise WorkerFailed(f"no shared memory for {self.name} ({err.strerror}); set train.workers: 1") from None
        try:
            os.ftruncate(fd, layout.total)
            memory = mmap.mmap(fd, layout.total)
            try:
                self._send(("attach", layout.rows))
                try:
                    sendfds(self.socket, [fd])
                except OSError:
                    self.broken = True
                    raise self._stopped() from None
                self._reply()
            except BaseException:
                _release(memory)
                raise
        finally:
            os.close(fd)  # both sides hold a mapping now; the memory goes with the last of them
        # Only now that the worker has mapped it: a refused attach leaves both sides on the old mailbox.
        self._release_memory()
        self.layout, self.memory = layout, memory
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shut, self.pipe, self.socket, self.process, [memory])

    def _view(self, name, dtype, shape):
        return self.layout.view(self.memory, name, dtype, shape)

    def start_forward(self, model, x, uniforms: dict, training: bool) -> None:
        """Hand over ``x`` (the worker's rows), the model's parameters and running statistics and the
        dropout uniforms of these rows (layer index -> array), and start the replica's forward."""
        if tuple(x.shape[1:]) != tuple(self.info["input_shape"]):
            raise ValueError(f"{self.name}: input of shape {x.shape[1:]}, the model takes {tuple(self.info['input_shape'])}")
        self._ensure_rows(len(x))
        self._view("params", model.flat_params.dtype, model.flat_params.shape)[...] = model.flat_params
        for j, (i, key, shape, dtype) in enumerate(self.info["buffers"]):
            self._view(f"buffer{j}", dtype, shape)[...] = model.layers[i].buffers[key]
        self._view("x", x.dtype, x.shape)[...] = x
        if training:
            for i, shape in self.info["dropout"]:
                self._view(f"drop{i}", np.float32, (len(x), *shape))[...] = uniforms[i]
        self._send(("forward", len(x), x.dtype.str, bool(training), np.geterr()))

    def finish_forward(self):
        """The replica's logits (rows, K), a copy; its running statistics are then in :meth:`buffers`."""
        _, dtype, shape = self._reply()
        return self._view("out", dtype, shape).copy()

    def buffers(self) -> list:
        """The replica's running statistics after its forward, in :func:`describe`'s order (views)."""
        return [self._view(f"buffer{j}", dtype, shape) for j, (_, _, shape, dtype) in enumerate(self.info["buffers"])]

    def start_backward(self, dy) -> None:
        if tuple(dy.shape[1:]) != tuple(self.info["output_shape"]) or len(dy) > self.layout.rows:
            raise ValueError(f"{self.name}: gradient of shape {dy.shape}, not of the logits of its rows")
        self._view("dy", dy.dtype, dy.shape)[...] = dy
        self._send(("backward", len(dy), dy.dtype.str, np.geterr()))

    def finish_backward(self):
        """The replica's flat gradients (P,), a view of the mailbox (valid until the next backward)."""
        self._reply()
        return self._view("grads", self.info["param_dtype"], (self.info["param_count"],))

    def _send(self, message) -> None:
        if self.broken:
            raise WorkerFailed(f"{self.name} is out of step after an interrupted or failed exchange; rerun")
        try:
            self.pipe.send(message)
        except (OSError, ValueError):
            self.broken = True
            raise self._stopped() from None
        except BaseException:  # Ctrl-C inside send: the worker may hold half a message
            self.broken = True
            raise

    def _reply(self):
        try:
            reply = self.pipe.recv()
        except (EOFError, OSError):
            self.broken = True
            raise self._stopped() from None
        except BaseException:  # Ctrl-C while waiting: the reply stays in the pipe
            self.broken = True
            raise
        if reply[0] == "error":
            kind = {"FloatingPointError": FloatingPointError, "ValueError": ValueError, "MemoryError": MemoryError}
            known = kind.get(reply[1])
            raise known(f"{self.name}: {reply[2]}") if known else WorkerFailed(f"{self.name}: {reply[1]}: {reply[2]}")
        return reply

    def _call(self, message):
        self._send(message)
        return self._reply()

    def _stopped(self) -> WorkerFailed:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = "none yet"
        return WorkerFailed(f"data-parallel worker process {self.name} stopped (exit code {code}); "
                           "rerun, or set train.workers: 1")

    def _release_memory(self) -> None:
        if self.memory is not None:
            _release(self.memory)
            self.memory = None

    def close(self) -> None:
        self._finalizer()


def _release(memory) -> None:
    """Unmap a mailbox here (the worker's mapping ends with the worker)."""
    try:
        memory.close()
    except BufferError:  # a view is still held by the caller: the mapping goes with it
        pass


def _shut(pipe, sock, process, memories) -> None:
    """Stop a worker process and free its mailbox (also run at garbage collection and interpreter exit)."""
    try:
        pipe.send(("close",))
    except (OSError, ValueError):
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    pipe.close()
    sock.close()
    for memory in memories:
        if memory is not None:
            _release(memory)


@functools.cache
def processes_available() -> bool:
    """Whether this system can run worker processes: it needs anonymous shared memory (``os.memfd_create``,
    Linux), tried once: sandboxes may have the call and refuse it."""
    try:
        os.close(os.memfd_create("nnlib-probe", os.MFD_CLOEXEC))
    except (AttributeError, OSError):
        return False
    return True


def start_processes(model, count: int) -> list[WorkerProcess]:
    """``count`` worker processes, each with a replica of ``model``."""
    started = []
    try:
        for i in range(count):
            started.append(WorkerProcess(model, f"nnlib-worker-{i + 1}"))
        for worker in started:
            worker.ready()
        return started
    except BaseException:
        for worker in started:
            worker.close()
        raise


# --- the worker process's side ---------------------------------------------------------------------------

def serve(fd: int) -> None:
    """A worker process's loop on the socket ``fd``: build the replica, then answer attach / forward /
    backward until close, or until the caller is gone.

    Ctrl-C reaches the whole process group: the worker ignores it (from the first statement of
    :data:`BOOT`), and the caller, which handles it, closes the worker (or exits, which the worker sees
    as the end of its socket).
    """
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    sock = socket.socket(fileno=fd)
    pipe = Connection(os.dup(fd))
    with threadpool_limits(limits=1, user_api="blas"):
        replica = None
        while True:
            try:
                message = pipe.recv()
                if message[0] == "close":
                    break
                replica = _answer(pipe, sock, replica, message)
            except (EOFError, OSError):  # the caller is gone, or went while we worked
                break
    # Leave at once: unmapping the mailboxes here could meet views still held in the replica's caches (a
    # BufferError at interpreter exit); the mappings end with the process.
    os._exit(0)


def _answer(pipe, sock, replica, message):
    """Carry out one command and send its reply (an error of the command is the reply, in one line);
    returns the replica, built by the first command."""
    try:
        if message[0] == "build":
            replica = _Replica(message[1])
            reply = ("ok", str(Path(__file__).resolve().parents[1]))
        elif message[0] == "attach":
            replica.attach(recvfds(sock, 1)[0], *message[1:])
            reply = ("ok",)
        else:
            reply = replica.handle(message)
    except Exception as err:  # noqa: BLE001 -- reported in one line to the caller, which raises it
        reply = ("error", type(err).__name__, str(err).splitlines()[0][:300] if str(err) else type(err).__name__)
    pipe.send(reply)
    return replica


class _Replica:
    """The replica in a worker process, its parameters and gradients views of the mailbox."""

    def __init__(self, info: dict):
        from .model import Sequential  # noqa: PLC0415

        self.info = info
        self.sizes = region_sizes(info)
        self.model = Sequential.from_specs(info["specs"], info["input_shape"], np.random.default_rng(0))
        self.memories, self.layout = [], None  # every mailbox attached: views of old ones may live on in caches

    def handle(self, message):
        kind = message[0]
        if kind == "forward":
            return self.forward(*message[1:])
        if kind == "backward":
            return self.backward(*message[1:])
        raise ValueError(f"unknown command {kind!r}")

    def attach(self, fd: int, rows: int) -> None:
        """Map the mailbox ``fd`` (for ``rows`` rows) and make the replica's parameters and gradients views of it."""
        layout = Layout(self.sizes, rows)
        try:
            self.memories.append(mmap.mmap(fd, layout.total))
        finally:
            os.close(fd)
        self.layout = layout  # only once mapped: a failed attach leaves the old mailbox in use
        count, dtype = self.info["param_count"], self.info["param_dtype"]
        params, grads = self._view("params", dtype, (count,)), self._view("grads", dtype, (count,))
        offset = 0
        for layer in self.model.layers:
            for key, value in layer.params.items():
                span = slice(offset, offset + value.size)
                layer.params[key] = params[span].reshape(value.shape)
                layer.grads[key] = grads[span].reshape(value.shape)
                offset += value.size
        self.model.flat_params, self.model.flat_grads = params, grads
        for j, (i, key, shape, bdtype) in enumerate(self.info["buffers"]):
            self.model.layers[i].buffers[key] = self._view(f"buffer{j}", bdtype, shape)

    def _view(self, name, dtype, shape):
        return self.layout.view(self.memories[-1], name, dtype, shape)

    def forward(self, rows: int, dtype: str, training: bool, errors: dict):
        x = self._view("x", dtype, (rows, *self.info["input_shape"]))
        if training:
            for i, shape in self.info["dropout"]:
                self.model.layers[i].handed = self._view(f"drop{i}", np.float32, (rows, *shape))
        self.model.training = training
        with np.errstate(**errors):
            out = self.model.forward(x)
        self._view("out", out.dtype, out.shape)[...] = out
        return ("ok", out.dtype.str, out.shape)

    def backward(self, rows: int, dtype: str, errors: dict):
        with np.errstate(**errors):
            self.model.backward(self._view("dy", dtype, (rows, *self.info["output_shape"])))
        return ("ok",)

