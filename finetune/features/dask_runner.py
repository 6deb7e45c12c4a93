"""The features stage on a Dask cluster (params `cluster`, `cluster_workers`, `threads`).

Written for a cluster of other machines that have the same Python packages but none of
the project's files: this process (the client) reads each image's encoded bytes, sends
them straight to the workers a chunk at a time (`Client.scatter(direct=True)`: not through
the scheduler), and writes the rows they return in order, with a bounded number of chunks
in flight, so its memory does not grow with the data. The code of the `finetune` package
travels once as a zip (`Client.upload_file`), the weights file once per worker
(`Client.scatter(broadcast=True)`, freed once built); each worker process builds the
extractor once and keeps it for the chunks that follow.

Only the workers that passed the checks below get chunks: one that joins later (or that its
nanny restarted under a new address) gets none. A worker that dies costs its chunks, not the
stage: they run again on another checked one. No wait is unbounded.

The rows are bit-identical to the serial path's (tests/scale/test_dask_features.py): the
workers decode with the same code (finetune.dataset.decode.decode_batches), run the same model
on batches of the same size, and round to float16 as FeatureWriter does (or keep
float32 where float16 cannot hold a chunk's values, as FeatureWriter then does). Measured with
TensorFlow 2.21 on CPU: neither the thread count (1, 2, 8) nor the batch an image runs
in changes its activations' bits; turning oneDNN off (TF_ENABLE_ONEDNN_OPTS=0) does, so
the workers must run the versions and settings this process would (checked below).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from finetune.core.errors import StageError
from finetune.core.progress import Progress
from finetune.dataset.image_files import READ_ERRORS
from finetune.features.store import FEATURE_PARAMS, FeatureWriter, storable

CHUNK_BATCHES = 2  # extraction batches per task: a task's bytes and rows stay small
IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: it never waits for the next one
CONNECT_TIMEOUT_S = 10  # for a scheduler address
# Bounds on the waits for workers that are alive but stuck (swapping, a hung GPU driver);
# one that dies is noticed within POLL_S. Building the model (TensorFlow's import, the
# backbone, its weights) took 8.7-12.2 s for InceptionV3 (docs/scaling-out.md) and can
# take minutes on a loaded machine or a GPU that compiles its kernels on first use: 15
# minutes leaves room for both, and only a stuck worker is waited for that long.
PREPARE_TIMEOUT_S = 900
# A chunk is 64 images through the frozen part (seconds on a CPU thread) behind at most
# IN_FLIGHT_PER_WORKER others on its worker: 10 minutes is a stuck worker.
CHUNK_TIMEOUT_S = 600
POLL_S = 1.0  # how often a wait asks the scheduler which checked workers are left
# A chunk's images are lost with the worker they were sent to: sent again this often,
# as Dask runs a task again after its worker dies (distributed.scheduler.allowed-failures).
RESENDS = 3
# What must match on every worker for the bits to match (oneDNN's kernels differ from
# Eigen's in the last bits; the rest pick the kernels and the decoder).
PACKAGES = ("tensorflow", "keras", "numpy")
ENVIRONMENT = ("TF_ENABLE_ONEDNN_OPTS",)
INSTALL_HINT = "install it with `make setup EXTRAS=dask`"

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F")


# --- pure logic (no Dask) -------------------------------------------------------------

def chunks(count: int, batch: int, batches_per_chunk: int = CHUNK_BATCHES) -> list[range]:
    """Items 0 .. count - 1 in consecutive chunks that start at multiples of `batch`, so
    that each chunk's batches hold the same items as the serial path's."""
    size = batch * batches_per_chunk
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _result(item: Any, future: Future[R]) -> R:
    return future.result()


def in_order(submit: Callable[[T], F], items: Iterable[T], window: int,
             outcome: Callable[[T, F], R] = _result) -> Iterator[R]:
    """Each item's result (`outcome` of the item and its future), in the order of `items`,
    with at most `window` submitted and not yet yielded: a slow chunk holds back the
    writing, never the memory bound."""
    pending: collections.deque[tuple[T, F]] = collections.deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) >= window:
            yield outcome(*pending.popleft())
    while pending:
        yield outcome(*pending.popleft())


def threads_per_worker(cores: dict[str, int], hosts: dict[str, str], threads: int
                       ) -> dict[str, int]:
    """TensorFlow threads for each worker: `threads` if set, else its machine's cores
    shared among the workers on that machine (two workers with all cores each would
    fight over them)."""
    on_host = collections.Counter(hosts.values())
    return {worker: threads or max(1, cores[worker] // on_host[hosts[worker]])
            for worker in cores}


def environment() -> dict[str, str]:
    """What decides the bits, besides the code: package versions and TensorFlow's switches."""
    found = {name: importlib.metadata.version(name) for name in PACKAGES}
    return found | {name: os.environ.get(name, "") for name in ENVIRONMENT}


def module_name(package: Path, path: Path) -> str:
    """finetune/features/store.py -> "finetune.features.store"; an __init__.py names its
    package."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def code_digests(package: Path) -> dict[str, str]:
    """Module name -> sha256 of its source, for every module of `package`."""
    return {module_name(package, path): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(package.rglob("*.py"))}


# --- on the workers -----------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What a worker needs besides the weights (to build) and the bytes (to extract):
    picklable, small."""

    params: dict[str, Any]
    weights_digest: str
    batch: int
    threads: dict[str, int]  # by worker address
    mirror: bool = False  # each image mirrored left-right first (mirrored_features)


_BUILD = threading.Lock()  # one build and one chunk at a time per worker process
_EXTRACTOR: dict[tuple[Any, ...], Any] = {}  # the last one built, by key
_CONFIGURED: list[int] = []  # the thread count TensorFlow was given in this process


def _key(job: Job) -> tuple[Any, ...]:
    return tuple(job.params[name] for name in FEATURE_PARAMS), job.weights_digest, job.mirror


def _extractor_here(job: Job, weights: bytes) -> Any:
    """This worker process's extractor for `job`, built if it has none; TensorFlow's
    threads set before its first op, as finetune.core.runtime.configure does for a stage."""
    from distributed import get_worker

    from finetune.core.runtime import configure

    key = _key(job)
    if key in _EXTRACTOR:
        return _EXTRACTOR[key]
    # Thread pools are fixed at TensorFlow's first op: a second job in this process keeps
    # the first one's (the thread count does not change the bits).
    threads = 0 if _CONFIGURED else job.threads.get(get_worker().address, 0)
    configure({**job.params, "threads": threads})
    _CONFIGURED.append(threads)
    from finetune.model.assembly import build_feature_extractor

    with tempfile.TemporaryDirectory() as folder:  # Keras loads weights from a file
        path = Path(folder) / "backbone_notop.h5"
        path.write_bytes(weights)
        extractor = build_feature_extractor(job.params, path, mirror=job.mirror)
    _EXTRACTOR.clear()  # one model per process: a long-lived worker does not pile them up
    _EXTRACTOR[key] = extractor
    return extractor


def prepare(job: Job, weights: bytes) -> tuple[tuple[int, ...], dict[str, str]]:
    """Build this worker's extractor; its output shape, and environment() with the kind
    of device TensorFlow computes on here."""
    import tensorflow as tf

    with _BUILD:
        extractor = _extractor_here(job, weights)
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return tuple(int(n) for n in extractor.output_shape[1:]), environment() | {"device": device}


def extract_chunk(job: Job, blobs: list[bytes]) -> tuple[np.ndarray, dict[int, str]]:
    """float16 rows (float32 if a value does not fit) of the images encoded in `blobs`
    (zeros for one that cannot be decoded), and why each such image could not, by position
    in `blobs`: what finetune.features.extract.extract writes and returns for these items,
    with the extractor `prepare` built in this process.

    Not the weights: Dask keeps one copy of them once no task waits for them (its Active
    Memory Manager drops the others), and a chunk that needed them would be lost with it."""
    from distributed import get_worker

    from finetune.dataset.decode import decode_batches

    with _BUILD:
        extractor = _EXTRACTOR.get(_key(job))
        if extractor is None:  # a new process at a checked address, or another job's model
            raise StageError(f"cluster: the Dask worker {get_worker().address} restarted, or "
                             "built another model, after its checks: run the stage again")
        size = int(extractor.input_shape[1])
        shape = tuple(int(n) for n in extractor.output_shape[1:])
        rows = np.zeros((len(blobs), *shape), dtype=np.float32)
        failures: dict[int, str] = {}
        for indices, images in decode_batches(blobs.__getitem__, len(blobs), size, job.batch,
                                              failures):
            rows[indices] = np.asarray(extractor.predict_on_batch(images.astype(np.float32)))
    # Checked and cast here, as FeatureWriter does: float16 (half the transfer) where the
    # chunk fits, float32 where it does not; a NaN or inf fails the stage in one line.
    return storable(rows), failures


# --- on the client ------------------------------------------------------------------

def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise StageError(f"cluster: Dask is not installed: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def _client(params: dict[str, Any]) -> Iterator[Any]:
    """A Client of a new local cluster ("local") or of the scheduler at `cluster`."""
    distributed = _distributed()
    if params["cluster"] == "local":
        # Processes, one task each: TensorFlow holds the GIL in places, and each process
        # gets its own share of the cores (threads_per_worker above).
        with distributed.LocalCluster(n_workers=params["cluster_workers"], threads_per_worker=1,
                                      processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(params["cluster"], timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise StageError(f"cluster: no Dask scheduler answers at {params['cluster']} "
                         f"({' '.join(str(error).split())}): start one (`dask scheduler`), "
                         "or set cluster: \"\"") from None
    with client:
        yield client


def _ship_code(client: Any, folder: Path) -> dict[str, str]:
    """Send the finetune package to every worker as a zip; return its code_digests."""
    package = Path(__file__).parents[1]
    code = code_digests(package)
    archive = folder / f"finetune-{hashlib.sha256(str(code).encode()).hexdigest()[:12]}.zip"
    with zipfile.ZipFile(archive, "w") as stream:
        for path in sorted(package.rglob("*.py")):
            stream.write(path, path.relative_to(package.parent).as_posix())
    client.upload_file(str(archive))
    return code


def _check_code(client: Any, code: dict[str, str]) -> None:
    """Refuse workers that imported other code of the package (a long-lived worker keeps what
    it first imported; an upload does not reload it)."""

    def stale_modules(code: dict[str, str]) -> list[str]:
        # Nested, so that cloudpickle sends this code itself, not a reference to a
        # worker's own (possibly stale) copy of this module.
        import hashlib
        import sys

        stale = []
        for name, digest in code.items():
            loader = getattr(sys.modules.get(name), "__loader__", None)
            source = loader.get_source(name) if loader is not None else None
            if source is not None and hashlib.sha256(source.encode()).hexdigest() != digest:
                stale.append(name)
        return stale

    for address, stale in client.run(stale_modules, code).items():
        if stale:
            raise StageError(f"cluster: the Dask worker {address} runs another version of "
                             f"{stale[0]}: restart the workers")


def _threads(client: Any, threads: int) -> dict[str, int]:
    workers = client.scheduler_info()["workers"]
    hosts = {address: info["host"] for address, info in workers.items()}
    return threads_per_worker(client.run(os.cpu_count), hosts, threads)


def _present(client: Any) -> set[str]:
    """The workers the scheduler has now."""
    return set(client.nthreads())


def _prepare_workers(client: Any, job: Job, weights: Any
                     ) -> tuple[tuple[int, ...], str, list[str]]:
    """Build the extractor on every worker at once; the output shape, the device kind
    they all compute on, and the workers that built it (the checked ones: a worker that
    leaves meanwhile, killed for memory say, is left out). Workers that would compute other
    bits than this process's packages would, or than each other (a GPU's kernels are not
    a CPU's), are refused."""
    distributed = _distributed()
    # Each on its own worker, so that each is checked: a task pinned to a worker that has
    # left waits for it forever (Dask's no-worker state), hence the look for the left ones.
    pending = {address: client.submit(prepare, job, weights, workers=[address], pure=False)
               for address in job.threads}
    deadline = time.monotonic() + PREPARE_TIMEOUT_S
    wanted: dict[str, str] = environment()
    shapes = set()
    checked = []
    while pending:
        with contextlib.suppress(TimeoutError):
            distributed.wait(list(pending.values()), timeout=POLL_S, return_when="FIRST_COMPLETED")
        for address in sorted(address for address, future in pending.items() if future.done()):
            shape, found = pending.pop(address).result()
            wanted.setdefault("device", found["device"])  # the first worker's
            different = [name for name in wanted if found.get(name) != wanted[name]]
            if different:
                name = different[0]
                raise StageError(f"cluster: the Dask worker {address} has {name} "
                                 f"{found.get(name)!r}, not {wanted[name]!r}: its features "
                                 "would differ (use the same packages and device everywhere)")
            shapes.add(shape)
            checked.append(address)
        for address in sorted(set(pending) - _present(client)):
            client.cancel(pending.pop(address))
            print(f"features: the Dask worker {address} left while building the model (out of "
                  "memory?); going on without it", file=sys.stderr, flush=True)
        if pending and time.monotonic() > deadline:
            raise StageError(f"cluster: the Dask worker {min(pending)} built no model in "
                             f"{PREPARE_TIMEOUT_S} s: is it swapping? Use fewer workers, or "
                             "cluster: \"\"")
    if not checked:
        raise StageError(f"cluster: every Dask worker left while building the model "
                         f"({', '.join(sorted(job.threads))}): out of memory? Use fewer "
                         "workers, or cluster: \"\"")
    return shapes.pop(), wanted["device"], sorted(checked)


class ClusterExtraction:
    """finetune.features.extract.extract's counterpart on a cluster (see `on_cluster`)."""

    def __init__(self, client: Any, job: Job, shape: tuple[int, ...], checked: list[str]
                 ) -> None:
        self.client, self.job, self.shape = client, job, shape
        self.checked = checked  # the workers that passed the checks: the only ones used

    def _alive(self) -> list[str]:
        """The checked workers the scheduler still has; a one-line error if none is left
        (the chunks, restricted to them, would wait forever)."""
        alive = sorted(set(self.checked) & _present(self.client))
        if not alive:
            raise StageError(f"cluster: every checked Dask worker left ({', '.join(self.checked)}"
                             "): out of memory? Run the stage again with fewer workers, or "
                             "cluster: \"\" (workers that join mid-run get no images)")
        return alive

    def _send(self, blobs: list[bytes]) -> Any:
        """The future of extract_chunk on `blobs`, which go to a checked worker directly,
        not through the scheduler; Dask frees them when the chunk is done and no future
        holds them."""
        name = f"images-{uuid.uuid4().hex}"  # a dict's keys are the data's keys: unique
        for _ in range(RESENDS):
            # OSError, TimeoutError: the worker picked left meanwhile; pick among the rest.
            with contextlib.suppress(OSError, TimeoutError):
                images = self.client.scatter({name: blobs}, workers=self._alive(),
                                             direct=True)[name]
                return self.client.submit(extract_chunk, self.job, images,
                                          workers=self.checked, pure=False)
        raise StageError(f"cluster: cannot send images to the Dask workers "
                         f"({', '.join(self._alive())}): can this machine reach their "
                         "addresses? Or set cluster: \"\"")

    def _wait(self, future: Any, items: range) -> tuple[np.ndarray, dict[int, str]]:
        """The chunk's result; a one-line error when no checked worker is left to compute
        it, or after CHUNK_TIMEOUT_S."""
        deadline = time.monotonic() + CHUNK_TIMEOUT_S
        while True:
            with contextlib.suppress(TimeoutError):
                return future.result(timeout=POLL_S)
            self._alive()
            if time.monotonic() > deadline:
                raise StageError(f"cluster: no rows for items {items[0]}..{items[-1]} in "
                                 f"{CHUNK_TIMEOUT_S} s from the Dask workers "
                                 f"({', '.join(self._alive())}): is one stuck or swapping? "
                                 "Use fewer workers, or cluster: \"\"")

    def extract(self, read: Callable[[int], bytes], count: int, destination: Path,
                what: str) -> dict[int, str]:
        """Write the rows of items 0 .. count - 1 to `destination` in order; return why each
        item that could not be decoded could not (a read error first, as serially)."""
        unread: dict[int, str] = {}

        def submit(items: range) -> Any:
            blobs = []
            for index in items:
                try:
                    blobs.append(read(index))
                except READ_ERRORS as error:
                    unread[index] = f"cannot read it: {error}"
                    blobs.append(b"")  # a row of zeros, as serially
            return self._send(blobs)

        def outcome(items: range, future: Any) -> tuple[np.ndarray, dict[int, str]]:
            for _ in range(RESENDS):
                try:
                    return self._wait(future, items)
                except CancelledError:  # its images were lost with a worker: read them again
                    future = submit(items)
            try:
                return self._wait(future, items)
            except CancelledError:
                raise StageError(f"cluster: the Dask workers holding items {items[0]}.."
                                 f"{items[-1]} died {RESENDS + 1} times: out of memory? Use "
                                 "fewer workers, or cluster: \"\"") from None

        parts = chunks(count, self.job.batch)
        window = IN_FLIGHT_PER_WORKER * len(self.checked)
        writer = FeatureWriter(destination, count, self.shape)
        progress = Progress(what, count)
        undecoded: dict[int, str] = {}
        for items, (rows, failures) in zip(parts, in_order(submit, parts, window, outcome),
                                           strict=True):
            undecoded.update({items[i]: reason for i, reason in failures.items()})
            writer.write(rows)
            progress.update(len(rows))
        writer.close()
        return unread | {index: reason for index, reason in sorted(undecoded.items())
                         if index not in unread}


@contextlib.contextmanager
def on_cluster(params: dict[str, Any], weights_file: Path, batch: int, mirror: bool = False
               ) -> Iterator[ClusterExtraction]:
    """The cluster of `params["cluster"]`, with the extractor built on every worker (of
    the images mirrored left-right, with `mirror`)."""
    started = time.monotonic()
    try:  # before the cluster starts: a missing file fails at once
        data = weights_file.read_bytes()
    except OSError as error:
        raise StageError(f"cannot read {weights_file} ({error.strerror}): run "
                         "`dvc repro fetch_weights`") from None
    with _client(params) as client, tempfile.TemporaryDirectory() as folder:
        if not client.scheduler_info()["workers"]:
            raise StageError(f"cluster: the Dask scheduler at {params['cluster']} has no workers")
        code = _ship_code(client, Path(folder))
        _check_code(client, code)
        weights = client.scatter(data, broadcast=True, hash=False)
        job = Job(params, hashlib.sha256(data).hexdigest(), batch,
                  _threads(client, params["threads"]), mirror)
        del data
        shape, device, checked = _prepare_workers(client, job, weights)
        del weights  # built: Dask frees them on the workers
        threads = "/".join(map(str, sorted({job.threads[address] for address in checked})))
        print(f"features: {len(checked)} Dask workers on {device} ready in "
              f"{time.monotonic() - started:.1f} s (TensorFlow threads: {threads} each)",
              file=sys.stderr, flush=True)
        try:
            yield ClusterExtraction(client, job, shape, checked)
        except _distributed().KilledWorker as error:
            raise StageError(f"cluster: a Dask worker died computing the features ({error}): "
                             "out of memory? Use fewer workers or cluster: \"\"") from None
