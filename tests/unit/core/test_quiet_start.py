"""finetune.core.quiet_start.filtered_stderr: what is written to file descriptor 2 in the
block, less the noise, shown in order; safe with threads. (The quiet start itself is
checked on real processes in tests/stages/test_quiet_start.py.)"""

from __future__ import annotations

import os
import re
import threading

import pytest

from finetune.core.quiet_start import filtered_stderr

NOISE = re.compile(r"E0000 .*\] |libjpeg says")


@pytest.fixture(autouse=True)
def tensorflow_log_not_asked_for(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


def test_noise_is_dropped_and_the_rest_shown_in_order(capfd):
    inside = "second, with E0000 00:00:17.3 1 jpeg_mem.cc:331] inside\n"  # matched from the start
    with filtered_stderr(NOISE):
        os.write(2, b"E0000 00:00:17.3   11017 jpeg_mem.cc:331] Premature end of JPEG data\n")
        os.write(2, b"first\nlibjpeg says hello\n")
        os.write(2, inside.encode())
    assert capfd.readouterr().err == "first\n" + inside


def test_whole_lines_show_while_the_block_runs(capfd):
    with filtered_stderr(NOISE) as show:
        os.write(2, b"done 1/2\nlibjpeg says hello\nhalf a li")
        show()
        assert capfd.readouterr().err == "done 1/2\n"  # the unfinished line waits...
        os.write(2, b"ne")
    assert capfd.readouterr().err == "half a line"  # ...until it ends, or the block does


def test_threads_share_it_and_fd_2_is_itself_again_after(capfd):
    before = os.fstat(2)

    def work(worker: int) -> None:
        for step in range(50):
            with filtered_stderr(NOISE):
                os.write(2, f"libjpeg says {worker}.{step}\n{worker}.{step}\n".encode())

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    os.write(2, b"after\n")  # not held back: the filter is off
    lines = capfd.readouterr().err.splitlines()
    assert lines[-1] == "after"
    assert sorted(lines[:-1]) == sorted(f"{w}.{s}" for w in range(8) for s in range(50))


def test_tensorflow_log_asked_for_shows_everything(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with filtered_stderr(NOISE):
        os.write(2, b"libjpeg says hello\n")
    assert capfd.readouterr().err == "libjpeg says hello\n"
