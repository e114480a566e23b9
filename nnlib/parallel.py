"""Data parallelism: one training step on several cores, deterministic for a worker count.

``DataParallel(model, workers)`` trains ``model`` the way PyTorch's ``DistributedDataParallel`` does.
Worker 0 is the model itself, run by the calling thread; workers 1.. run on threads of this process, or,
when every worker has a core of its own, each in a worker process fed through shared memory
(:mod:`nnlib.processes`). The bytes are the same either way. A batch of N images is split into ``workers`` contiguous parts (sizes
as :func:`numpy.array_split` gives them). Worker i runs a *replica* of the model on part i::

    forward    x[part i] -> logits[part i]              (all workers at once)
    loss       on the whole batch's logits, once         (the caller: loss_fn.value_and_grad)
    backward   dlogits[part i] -> worker i's gradients   (all workers at once)
    sum        model's gradients = g_0 + g_1 + ...       (in worker order)

and the optimizer then takes one step on the model, as with one worker. On threads, NumPy releases the GIL
in its loops and in BLAS, so the workers run on separate cores; BLAS must be pinned to one thread per
worker (:func:`nnlib.threads.limit` with ``blas=1``; worker processes pin their own), so that no BLAS
thread spins waiting for a core.

What the replicas share and what each has:

* **parameters** are shared: a replica's parameters are views of the model's, updated in place by the
  optimizer, so there is one copy;
* **activations and gradients** are the replica's own;
* **BatchNorm** normalises by the statistics of the replica's part, as ``DistributedDataParallel``
  without ``SyncBatchNorm`` does. That is a change of recipe against one worker (statistics of N / workers
  images), so a worker count gives its own bytes. The running statistics are the mean of the replicas',
  in worker order, after each forward;
* **dropout** masks are drawn by the model's own dropout layers for the whole batch, exactly as one
  worker draws them, and each replica uses its rows: the Generators advance as in a one-worker run.

The bytes depend on ``workers`` and not on ``threads`` (how many threads execute the workers) nor on
whether they are processes: with fewer threads than workers, as on a busy machine, workers take turns on
threads and every sum keeps its order.
"""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from .backend import get_array_module
from .committee import Committee
from .layers import BatchNorm, Dropout
from .model import pack_parameters
from .processes import processes_available, start_processes


def split_points(n: int, parts: int) -> list[tuple[int, int]]:
    """The (start, stop) rows of each non-empty part of ``n`` rows split into ``parts`` (as array_split)."""
    sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
    bounds = np.cumsum([0, *sizes]).tolist()
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def replicate(model):
    """A replica of ``model`` (a :class:`~nnlib.model.Sequential`): the same layers on the model's parameter
    arrays (views, not copies), with gradients, buffers and caches of its own, in the model's dtypes and
    mode. A :class:`~nnlib.committee.Committee` is replicated member by member, with its weights."""
    if isinstance(model, Committee):
        return Committee([replicate(member) for member in model.members], weights=list(model.weights))
    replica = type(model).from_specs(model.specs(), model.input_shape, np.random.default_rng(0))
    for own, theirs in zip(replica.layers, model.layers):
        xp = get_array_module(*theirs.params.values(), *theirs.buffers.values())
        own.params = dict(theirs.params)
        own.grads = {key: xp.zeros_like(value) for key, value in theirs.params.items()}
        own.buffers = {key: value.copy() for key, value in theirs.buffers.items()}
    _, replica.flat_grads = pack_parameters(replica.layers)  # its gradients laid out as the model's
    for own, theirs in zip(replica.layers, model.layers):
        own.params = dict(theirs.params)  # packing moved them into a new array: back to the model's
    replica.flat_params = model.flat_params
    replica.training = model.training
    return replica


class DataParallel:
    """Train ``model`` (a :class:`~nnlib.model.Sequential`) on ``workers`` replicas run by ``threads`` threads.

    ``processes``: run workers 1.. in worker processes (True), on threads (False), or (None, the default)
    in processes when there is a thread for every worker, the model is on NumPy with one parameter dtype,
    and the system has ``os.memfd_create`` (Linux).

    Used in its place in the training loop: :meth:`forward` takes the whole batch x: (N, ...) and returns
    the whole batch's logits (N, K) in the model's mode (validation is split over the workers too);
    :meth:`backward` takes d(loss)/d(logits) (N, K) and leaves the summed gradients in the model's.
    Anything else (``train``, ``evaluating``, ``state``, ``parameters``) is the model's own.
    ``workers`` = 1 is the model itself, step for step. Call :meth:`close` (or use ``with``) to end the threads.
    """

    def __init__(self, model, workers: int, threads: int | None = None, processes: bool | None = None):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"DataParallel: workers must be an integer >= 1, got {workers!r}")
        threads = workers if threads is None else threads
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"DataParallel: threads must be an integer >= 1, got {threads!r}")
        self.model, self.workers, self.threads = model, workers, min(threads, workers)
        possible = workers > 1 and processes_available() and model.flat_params is not None \
            and get_array_module(model.flat_params) is np
        if processes is None:
            processes = possible and self.threads == workers
        elif processes and not possible:
            raise ValueError("DataParallel: processes need workers > 1, Linux (os.memfd_create) and a NumPy model "
                             "with one parameter dtype")
        self.use_processes = bool(processes)
        self.processes = start_processes(model, workers - 1) if processes else []
        self.replicas = [model] + ([] if processes else [replicate(model) for _ in range(workers - 1)])
        use_pool = self.threads > 1 and not processes
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nnlib-worker") if use_pool else None
        self.parts: list[tuple[int, int]] = []

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        for worker in self.processes:
            worker.close()
        self.processes = []

    def __enter__(self) -> "DataParallel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name):  # train(), eval(), evaluating(), state(), parameters(), ...: the model's
        return getattr(self.model, name)

    def _each(self, work, args: list) -> list:
        """``work(replica, arg)`` for every active worker, in parallel when there are threads; results in worker order.

        NumPy's floating-point error handling (``np.errstate``) is per thread: each worker runs under the
        caller's, so that a training that ignores overflow (to report divergence in one line) does so on
        every thread.
        """
        jobs = list(zip(self.replicas, args))
        if self.pool is None:
            return [work(replica, arg) for replica, arg in jobs]
        return [future.result() for future in [self.pool.submit(_under(np.geterr(), work), replica, arg)
                                               for replica, arg in jobs]]

    def forward(self, x):
        """x: (N, ...) -> logits (N, K), in the model's mode (eval mode too: validation runs on every worker)."""
        training = self.model.training
        self.parts = split_points(len(x), self.workers)
        if self.use_processes:
            return self._forward_on_processes(x, training)
        self._share_buffers()
        if training:
            self._hand_out_dropout(len(x), get_array_module(x))

        def run(replica, part):
            replica.training = training
            return replica.forward(x[part[0]:part[1]])

        outputs = self._each(run, self.parts)
        if training:
            self._average_running_statistics(len(self.parts))
        return outputs[0] if len(outputs) == 1 else get_array_module(outputs[0]).concatenate(outputs)

    __call__ = forward

    def backward(self, dy):
        """dy: (N, K), the gradient of the whole batch's loss. Fills the model's gradients with the sum of the workers'."""
        if self.use_processes:
            return self._backward_on_processes(dy)
        self._each(lambda replica, part: replica.backward(dy[part[0]:part[1]]), self.parts)
        active = self.replicas[:len(self.parts)]
        if self.model.flat_grads is not None:
            for replica in active[1:]:
                self.model.flat_grads += replica.flat_grads
        else:
            for replica in active[1:]:
                for (_, _, total), (_, _, own) in zip(self.model.parameters(), replica.parameters()):
                    total += own

    def _others(self) -> list:
        """(worker process, its part) for workers 1.. that have a part of this batch."""
        if not self.processes:
            raise ValueError("DataParallel: used after close()")
        return list(zip(self.processes, self.parts[1:]))

    def _forward_on_processes(self, x, training: bool):
        """forward with workers 1.. in processes: the same values as on threads (see :mod:`nnlib.processes`)."""
        (start, stop), others = self.parts[0], self._others()
        uniforms = self._draw_dropout(len(x), np) if training else {}
        started = []  # a worker whose start failed is not waited for; those started before it are
        with _finishing(started, "finish_forward") as outputs:
            for worker, (a, b) in others:  # each takes the model's running statistics as they are before any forward
                worker.start_forward(self.model, x[a:b], {i: u[a:b] for i, u in uniforms.items()}, training)
                started.append((worker, (a, b)))
            for i, u in uniforms.items():
                self.model.layers[i].handed = u[start:stop]
            outputs.append(self.model.forward(x[start:stop]))
        if training and others:
            statistics = [(layer, key) for layer in self.model.layers if type(layer) is BatchNorm for key in layer.buffers]
            for worker, _ in others:
                for (layer, key), value in zip(statistics, worker.buffers()):
                    layer.buffers[key] += value
            for layer, key in statistics:
                layer.buffers[key] /= layer.buffers[key].dtype.type(len(self.parts))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _backward_on_processes(self, dy) -> None:
        (start, stop), others = self.parts[0], self._others()
        started = []
        with _finishing(started, "finish_backward") as grads:
            for worker, (a, b) in others:
                worker.start_backward(dy[a:b])
                started.append((worker, (a, b)))
            self.model.backward(dy[start:stop])
        for own in grads:  # the workers' gradients, added to the model's in worker order
            self.model.flat_grads += own

    def _layers(self, kind):
        """(index, layer) of the model's layers of type ``kind``."""
        return [(i, layer) for i, layer in enumerate(self.model.layers) if type(layer) is kind]

    def _share_buffers(self) -> None:
        """Every replica starts the step from the model's running statistics (restored, resumed or averaged)."""
        for i, layer in self._layers(BatchNorm):
            for replica in self.replicas[1:]:
                for key, value in layer.buffers.items():
                    replica.layers[i].buffers[key][...] = value

    def _average_running_statistics(self, active: int) -> None:
        """The model's running statistics = the mean of the active replicas', summed in worker order."""
        if active == 1:
            return
        for i, layer in self._layers(BatchNorm):
            for key, value in layer.buffers.items():
                for replica in self.replicas[1:active]:
                    value += replica.layers[i].buffers[key]
                value /= value.dtype.type(active)

    def _draw_dropout(self, n: int, xp) -> dict:
        """Each dropout layer of the model draws the whole batch's uniforms, as one worker would: index -> (n, ...)."""
        drawn = {}
        for i, layer in self._layers(Dropout):
            if layer.p > 0.0:
                drawn[i] = layer.draw_uniform((n, *(self.model.input_shape if i == 0 else self.model.layer_shapes[i - 1])), xp)
        return drawn

    def _hand_out_dropout(self, n: int, xp) -> None:
        """Each replica gets its rows of the whole batch's dropout uniforms."""
        for i, uniforms in self._draw_dropout(n, xp).items():
            for replica, (start, stop) in zip(self.replicas, self.parts):
                replica.layers[i].handed = uniforms[start:stop]


@contextmanager
def _finishing(started, finish: str):
    """Collect, after the block, ``getattr(worker, finish)()`` of every (worker, part) in ``started`` (which
    the block fills as it starts them), in order, after what the block appended to the list it is given
    (worker 0's result). Every started worker is waited for even when the block or a worker fails, so that
    the next call finds each pipe empty; the first failure is raised."""
    results, failure = [], None
    try:
        yield results
    except BaseException as err:  # noqa: BLE001 -- raised below, once the workers are done
        failure = err
    for worker, _ in started:
        try:
            results.append(getattr(worker, finish)())
        except BaseException as err:  # noqa: BLE001
            failure = failure or err
    if failure is not None:
        raise failure


def _under(errors: dict, work):
    """``work`` wrapped to run under the floating-point error handling ``errors`` (from ``np.geterr()``)."""
    def run(*args):
        with np.errstate(**errors):
            return work(*args)
    return run


def map_on_replicas(model, work, items, threads: int) -> list:
    """``[work(replica, item) for item in items]`` on ``threads`` threads, each thread with a replica of
    ``model`` (a network or a committee) of its own (the model itself for the first), for inference:
    results in item order.

    The replicas take the model's mode and buffers as they are now (a committee's members infer in eval
    mode whatever their mode); ``work`` must not train. BLAS should be
    pinned to one thread meanwhile (:func:`nnlib.threads.limit` with ``blas=1``, or threadpoolctl).
    """
    items = list(items)
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        return [work(model, item) for item in items]
    replicas = [model] + [replicate(model) for _ in range(threads - 1)]
    free = queue.SimpleQueue()
    for replica in replicas:
        free.put(replica)

    errors = np.geterr()

    def run(item):
        replica = free.get()
        try:
            with np.errstate(**errors):
                return work(replica, item)
        finally:
            free.put(replica)

    with ThreadPoolExecutor(threads, thread_name_prefix="nnlib-worker") as pool:
        return list(pool.map(run, items))
