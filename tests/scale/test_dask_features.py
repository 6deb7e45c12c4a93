"""The features stage on a Dask cluster (finetune/features/dask_runner.py): the same bytes
as serially.

The tests marked `scale` (`make test-scale`, needs `make setup EXTRAS=dask`) run the
stage three times on one small project: in this process (cluster: ""), on a local
cluster of two worker processes (cluster: "local"), and on a `dask scheduler` with two
`dask worker` processes started where the project's files are not (cluster: its
address), and compare the files byte for byte. The project has more images than one
chunk of the cluster's, and a corrupt test image in the middle of a batch, so that the
serial path's batches after it hold other images than the cluster's (the bits must not
depend on that). They print images/s each way and the clusters' start-up time (not
asserted: on a 2-core machine two workers share the cores the serial run had alone).

The others need no Dask: how the items are cut into chunks and put back in order.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from finetune.core.errors import StageError
from finetune.features.dask_runner import chunks, in_order, on_cluster, threads_per_worker
from finetune.features.extract import EXTRACT_BATCH
from tests.support.commands import assert_stage_error, run_stage, stage_command, stage_env
from tests.support.photos import gray_png
from tests.support.projects import (
    SMALL_NETWORK,
    lay_out_project,
    train_images,
    write_params,
    write_test_set,
    write_train_images,
)
from tests.support.shared import ROOT

# --- without Dask ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 31, 32, 33, 64, 65, 200])
def test_chunks_cover_every_item_once_and_start_on_batch_boundaries(count):
    parts = chunks(count, EXTRACT_BATCH)
    assert [i for part in parts for i in part] == list(range(count))
    assert all(part.start % EXTRACT_BATCH == 0 and len(part) for part in parts)
    assert all(len(part) % EXTRACT_BATCH == 0 for part in parts[:-1])


def test_results_come_in_order_with_a_bounded_window():
    # Later items finish first (random delays); at most `window` are ever outstanding.
    window, outstanding, most = 3, [0], [0]
    lock = threading.Lock()

    def work(item: int) -> int:
        time.sleep(random.Random(item).uniform(0, 0.02))
        return item * item

    def submit(item: int) -> Future[int]:
        with lock:
            outstanding[0] += 1
            most[0] = max(most[0], outstanding[0])
        return pool.submit(work, item)

    results = []
    with ThreadPoolExecutor(4) as pool:
        for result in in_order(submit, range(20), window):
            with lock:
                outstanding[0] -= 1
            results.append(result)
    assert results == [item * item for item in range(20)]
    assert most[0] == window


def test_an_item_lost_on_its_way_is_sent_again_in_its_place():
    # As ClusterExtraction does for a chunk whose worker died with its images: the
    # outcome sends it again; the order and the bound on what is outstanding hold.
    window, outstanding, most, sent = 3, [0], [0], []

    def submit(item: int) -> Future[int]:
        outstanding[0] += 1
        most[0] = max(most[0], outstanding[0])
        sent.append(item)
        future: Future[int] = Future()
        if sent.count(item) == 1 and item % 4 == 1:
            future.cancel()  # lost: the first time for every fourth item
        else:
            future.set_result(item * item)
        return future

    def outcome(item: int, future: Future[int]) -> int:
        while future.cancelled():
            outstanding[0] -= 1
            future = submit(item)
        outstanding[0] -= 1
        return future.result()

    assert list(in_order(submit, range(20), window, outcome)) == [i * i for i in range(20)]
    assert sorted(sent) == sorted([*range(20), *range(1, 20, 4)])
    assert most[0] == window


def test_threads_share_each_machines_cores():
    cores = {"tcp://a:1": 16, "tcp://a:2": 16, "tcp://b:1": 8, "tcp://c:1": 1, "tcp://c:2": 1}
    hosts = {address: address.split(":")[1][2:] for address in cores}
    assert threads_per_worker(cores, hosts, 0) == {
        "tcp://a:1": 8, "tcp://a:2": 8, "tcp://b:1": 8, "tcp://c:1": 1, "tcp://c:2": 1}
    assert set(threads_per_worker(cores, hosts, 3).values()) == {3}  # `threads` wins


def test_without_dask_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    params = {"cluster": "local", "cluster_workers": 2, "threads": 0}
    (tmp_path / "weights.h5").write_bytes(b"weights")
    installing = r"^cluster: Dask is not installed: install it with `make setup EXTRAS=dask`$"
    with pytest.raises(StageError, match=installing), \
            on_cluster(params, tmp_path / "weights.h5", EXTRACT_BATCH):
        pass


# --- on a cluster -----------------------------------------------------------------------

PER_CLASS = 60  # 120 training images: two chunks, the second partly filled
TEST_IMAGES = 70  # drawn test photos repeated under new ids: two chunks
CORRUPT_AT = 40  # in the middle of the second batch


def make_project(root: Path, sample_dir: Path, weights: Path) -> Path:
    """lay_out_project's project with TEST_IMAGES test images: the 20 drawn test photos
    over and over, a grayscale PNG, and a truncated JPEG at position CORRUPT_AT."""
    project = lay_out_project(root, sample_dir, weights, PER_CLASS, **SMALL_NETWORK)
    photos = sorted((sample_dir / "test").glob("*.jpg"), key=lambda path: int(path.stem))
    entries = [(f"test/{n}.jpg", photos[n % len(photos)].read_bytes())
               for n in range(TEST_IMAGES)]
    entries[7] = ("test/7.jpg", gray_png(photos[7], root / "gray.png").read_bytes())
    entries[CORRUPT_AT] = (f"test/{CORRUPT_AT}.jpg", photos[0].read_bytes()[:500])
    write_test_set(project, entries, [str(n) for n in range(TEST_IMAGES)])
    return project


def figures(stderr: str) -> dict[str, float]:
    """Images/s of each image set from the stage's last progress lines; start-up seconds."""
    found = {what: float(rate.replace(",", "")) for what, rate in re.findall(
        r"features: (training|test) images: [\d,]+/[\d,]+ images \(100%, ([\d,]+) images/s\)",
        stderr)}
    ready = re.search(r"ready in ([\d.]+) s", stderr)
    if ready:
        found["start-up s"] = float(ready.group(1))
    return found


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int) -> Iterator[tuple[str, Any]]:
    """The address of a `dask scheduler` with `workers` `dask worker` processes on
    loopback, each under a nanny that restarts it if it dies (as in production), started
    in `folder` without PYTHONPATH: workers with the packages but none of the project's
    files, as on other machines; and a Client of it, to watch it."""
    distributed = pytest.importorskip("distributed", reason="needs Dask: make setup EXTRAS=dask")
    env = {key: value for key, value in stage_env().items() if key != "PYTHONPATH"}
    dask, file = str(Path(sys.executable).parent / "dask"), str(folder / "scheduler.json")
    options = {"cwd": folder, "env": env, "stdout": subprocess.DEVNULL,
               "stderr": subprocess.DEVNULL}
    processes = [subprocess.Popen([dask, "scheduler", "--scheduler-file", file, "--host",
                                   "127.0.0.1", "--port", "0", "--no-dashboard"], **options)]
    try:
        processes.append(subprocess.Popen([dask, "worker", "--scheduler-file", file,
                                           "--nworkers", str(workers), "--nthreads", "1",
                                           "--no-dashboard"], **options))
        with distributed.Client(scheduler_file=file, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            yield client.scheduler.address, client
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> Iterator[str]:
    """The address of a dask_cluster of two workers."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), 2) as (address, _):
        yield address


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_dir, mobilenet_random_weights, scheduler) -> dict:
    """One project, and the stage run on it each way: "serial", "local" (2 workers) and
    "scheduler" (`scheduler`'s 2 workers), as (its files' bytes, stderr, wall seconds)."""
    root = tmp_path_factory.mktemp("scale-features")
    project = make_project(root / "project", sample_dir, mobilenet_random_weights)
    found: dict = {"project": project}
    for way, cluster in [("serial", ""), ("local", "local"), ("scheduler", scheduler)]:
        write_params(project, **SMALL_NETWORK, cluster=cluster, cluster_workers=2)
        start = time.monotonic()
        result = run_stage("features", project, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        features = project / "data" / "features"
        files = {path.name: path.read_bytes() for path in sorted(features.iterdir())}
        found[way] = (files, result.stderr, time.monotonic() - start)
    return found


@pytest.mark.scale
@pytest.mark.parametrize("way", ["local", "scheduler"])
def test_cluster_writes_the_serial_bytes(runs, way):
    serial, cluster = runs["serial"][0], runs[way][0]
    assert sorted(serial) == ["index.json", "test.npy", "train.npy"]
    for name in serial:
        assert cluster[name] == serial[name], name
    # The corrupt image is reported, not lost, and only it.
    assert f'"test/{CORRUPT_AT}.jpg"' in serial["index.json"].decode()
    last = runs[way][1].strip().splitlines()[-1]
    assert last == (f"features: wrote data/features: {2 * PER_CLASS} training images of "
                    f"2 classes, {TEST_IMAGES} test images, 1 unreadable")


@pytest.mark.scale
@pytest.mark.parametrize("way", ["local", "scheduler"])
def test_cluster_prints_the_same_progress_lines(runs, way):
    stderr = runs[way][1]
    for what, count in [("training", 2 * PER_CLASS), ("test", TEST_IMAGES)]:
        assert re.search(rf"^features: {what} images: {count}/{count} images \(100%, "
                         r"[\d,]+ images/s\)$", stderr, re.MULTILINE), stderr
    # And says what it started: 2 workers, 1 thread each (2 cores here; 1 if one core).
    assert re.search(r"^features: 2 Dask workers on CPU ready in [\d.]+ s \(TensorFlow "
                     r"threads: 1 each\)$", stderr, re.MULTILINE), stderr
    assert "Traceback" not in stderr


@pytest.mark.scale
def test_print_images_per_second_serial_and_on_2_workers(runs):
    for way in ("serial", "local", "scheduler"):
        _, stderr, wall = runs[way]
        print(f"{way}: {figures(stderr)}, stage wall {wall:.1f} s")


@pytest.mark.scale
def test_workers_that_run_other_code_are_refused(tmp_path, runs, scheduler):
    # The workers keep the modules they imported for `runs`: a client with other code
    # must not get rows computed by the old code.
    for package in ("stages", "finetune"):
        shutil.copytree(ROOT / package, tmp_path / package)
    with (tmp_path / "finetune" / "dataset" / "decode.py").open("a") as stream:
        stream.write("# edited\n")
    project = shutil.copytree(runs["project"], tmp_path / "project")
    write_params(project, **SMALL_NETWORK, cluster=scheduler)
    result = subprocess.run(stage_command("features"), cwd=project, capture_output=True,
                            text=True, env={**stage_env(), "PYTHONPATH": str(tmp_path)},
                            timeout=300)
    assert_stage_error(result, "cluster: the Dask worker tcp://127.0.0.1:",
                       "runs another version of finetune.dataset.decode: restart the workers")


@pytest.mark.scale
def test_a_training_image_that_cannot_be_decoded_fails_as_serially(tmp_path, sample_dir,
                                                                    mobilenet_random_weights):
    pytest.importorskip("distributed", reason="needs Dask: make setup EXTRAS=dask")
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 2,
                              test_images=2, **SMALL_NETWORK)
    images = train_images(project)
    images["dog/dog.1.jpg"] = images["dog/dog.1.jpg"][:300]
    write_train_images(project, images)  # listed as it is: the decoder is what finds it
    lines = []
    for cluster in ("", "local"):
        write_params(project, **SMALL_NETWORK, cluster=cluster)
        lines.append(assert_stage_error(run_stage("features", project),
                                        "dog/dog.1.jpg cannot be decoded",
                                        "dvc repro -f split_classes"))
    assert lines[0] == lines[1]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.scale
def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path, sample_dir,
                                                      mobilenet_random_weights):
    pytest.importorskip("distributed", reason="needs Dask: make setup EXTRAS=dask")
    address = f"tcp://127.0.0.1:{unused_port()}"
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 1,
                              test_images=1, **SMALL_NETWORK, cluster=address)
    start = time.monotonic()
    assert_stage_error(run_stage("features", project),
                       f"cluster: no Dask scheduler answers at {address} (", "start one")
    print(f"gave up after {time.monotonic() - start:.1f} s")
    assert not (project / "data" / "features").exists()


# --- workers that die or join mid-run; the images' way to the workers ---------------------

BOUND_S = 150  # on the stage: a stage that hangs fails its test, never the suite


@contextlib.contextmanager
def killing(client: Any, task: str) -> Iterator[list[str]]:
    """Kill (SIGKILL) the first worker the scheduler gives a `task` task to (its nanny
    starts another, under a new address): the list of the killed worker's address, once
    killed. The task stream records which worker ran which task from here on."""
    pids = client.run(os.getpid)
    client.get_task_stream()  # starts the scheduler's record of the tasks run
    killed: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not killed:
            for address, keys in client.processing().items():
                if address in pids and any(str(key).startswith(f"{task}-") for key in keys):
                    os.kill(pids[address], 9)
                    killed.append(address)
                    break
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        done.set()
        watcher.join()


def workers_that_ran(client: Any, task: str) -> set[str]:
    return {record["worker"] for record in client.get_task_stream()
            if str(record["key"]).startswith(f"{task}-")}


def run_killing(tmp_path: Path, runs: dict, workers: int, task: str
                ) -> tuple[subprocess.CompletedProcess[str], str, set[str], set[str]]:
    """The stage on a dask_cluster of `workers`, one of them killed when given its first
    `task` task, within BOUND_S: the stage's result, the killed worker, the workers that
    were there before and those that ran extract_chunk tasks."""
    project = shutil.copytree(runs["project"], tmp_path / "project")
    with dask_cluster(tmp_path, workers) as (address, client):
        write_params(project, **SMALL_NETWORK, cluster=address)
        before = set(client.nthreads())
        start = time.monotonic()
        with killing(client, task) as killed:
            try:
                result = run_stage("features", project, timeout=BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the stage hung: killed by the time bound after {BOUND_S} s")
        assert killed, "no worker was killed"
        print(f"killed {killed[0]} in its first {task}; stage {time.monotonic() - start:.1f} s")
        return result, killed[0], before, workers_that_ran(client, "extract_chunk")


def assert_serial_bytes(project: Path, runs: dict) -> None:
    features = project / "data" / "features"
    assert {path.name: path.read_bytes() for path in features.iterdir()} == runs["serial"][0]


@pytest.mark.scale
def test_a_worker_killed_while_building_the_model_is_left_out(tmp_path, runs):
    # Its `prepare` task, pinned to it, would wait forever for it; the other worker does
    # the work, and the restarted one (a new address, unchecked) gets no images.
    result, killed, before, ran = run_killing(tmp_path, runs, 2, "prepare")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"features: the Dask worker {killed} left while building the model" in result.stderr
    assert "features: 1 Dask workers on CPU ready" in result.stderr
    assert ran == before - {killed}
    assert_serial_bytes(tmp_path / "project", runs)


@pytest.mark.scale
def test_a_worker_killed_mid_extraction_costs_its_chunks_not_the_stage(tmp_path, runs):
    # Its chunks (and the images sent to it) are lost: Dask and the client run them again
    # on the other checked worker, never on the restarted one; the same bytes as serially.
    result, killed, before, ran = run_killing(tmp_path, runs, 2, "extract_chunk")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran <= before and before - {killed} <= ran
    assert_serial_bytes(tmp_path / "project", runs)


@pytest.mark.scale
def test_when_every_checked_worker_dies_the_stage_fails_in_one_line(tmp_path, runs):
    # The only worker killed mid-extraction: its nanny starts another, which joins after
    # the checks and must get no images; the chunks cannot go anywhere: one line, at once.
    result, killed, _, ran = run_killing(tmp_path, runs, 1, "extract_chunk")
    assert_stage_error(result, f"cluster: every checked Dask worker left ({killed})",
                       "Run the stage again with fewer workers",
                       "workers that join mid-run get no images")
    assert ran <= {killed}
    assert not (tmp_path / "project" / "data" / "features").exists()


@pytest.mark.scale
def test_images_go_to_the_workers_not_through_the_scheduler(tmp_path, runs):
    # Large photos as task arguments would be hundreds of MB through the scheduler; sent
    # with Client.scatter(direct=True), freed once their chunk is done: at most the
    # in-flight window's worth held at once.
    from finetune.features.dask_runner import IN_FLIGHT_PER_WORKER

    project = shutil.copytree(runs["project"], tmp_path / "project")

    # Nested, so that cloudpickle sends their code: the scheduler cannot import this module.
    def watch_task_specs(dask_scheduler: Any) -> None:
        """Record on the scheduler the largest task it is given (pickled) and the most
        images sent to the workers it holds at once (keys "images-*")."""
        import pickle

        from distributed.diagnostics.plugin import SchedulerPlugin

        class Watch(SchedulerPlugin):
            name = "watch-task-specs"

            def __init__(self) -> None:
                self.largest, self.most_images = 0, 0

            def update_graph(self, scheduler: Any, *, tasks: list, **kwargs: Any) -> None:
                for key in tasks:
                    spec = scheduler.tasks[key].run_spec
                    self.largest = max(self.largest, len(pickle.dumps(spec)))
                images = sum(str(key).startswith("images-") and task.state == "memory"
                             for key, task in scheduler.tasks.items())
                self.most_images = max(self.most_images, images)

        dask_scheduler.add_plugin(Watch())

    def recorded(dask_scheduler: Any) -> tuple[int, int]:
        watch = dask_scheduler.plugins["watch-task-specs"]
        return watch.largest, watch.most_images

    with dask_cluster(tmp_path, 1) as (address, client):
        client.run_on_scheduler(watch_task_specs)
        write_params(project, **SMALL_NETWORK, cluster=address)
        result = run_stage("features", project, timeout=BOUND_S)
        assert result.returncode == 0, result.stderr[-3000:]
        largest, most_images = client.run_on_scheduler(recorded)
    chunk = sum(len(photo) for photo in list(train_images(project).values())[:2 * EXTRACT_BATCH])
    print(f"largest task {largest:,} bytes; a chunk's images {chunk:,} bytes")
    assert largest < 16_384 < chunk
    assert 1 <= most_images <= IN_FLIGHT_PER_WORKER
    assert_serial_bytes(project, runs)


@pytest.mark.scale
def test_mirrored_features_on_a_cluster_write_the_serial_bytes(tmp_path, sample_dir,
                                                              mobilenet_random_weights):
    """tta: flip: the mirror images' features, computed on a local Dask cluster (the flag
    travels in the job), are the serial run's bytes, and not the plain features'."""
    pytest.importorskip("distributed", reason="needs Dask: make setup EXTRAS=dask")
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 8,
                              **SMALL_NETWORK)
    written = {}
    for way, cluster in [("serial", ""), ("local", "local")]:
        write_params(project, **SMALL_NETWORK, tta="flip", cluster=cluster, cluster_workers=2)
        result = run_stage("mirrored_features", project, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        folder = project / "data" / "mirrored_features"
        written[way] = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    assert sorted(written["serial"]) == ["index.json", "test.npy", "train.npy"]
    assert written["local"] == written["serial"]
    assert run_stage("features", project, timeout=600).returncode == 0
    plain = (project / "data" / "features" / "train.npy").read_bytes()
    assert plain != written["serial"]["train.npy"]
