"""`dvc repro` killed mid-training (SIGKILL to DVC and the stage) resumes on the next
`dvc repro` and ends with the metrics of an uninterrupted run.

MobileNet (alpha 0.25) with random weights calibrated on the drawn photos (conftest's
`mobilenet_random_weights`), cut at `conv_pw_3_relu`, where its features still tell
the drawn classes apart: the model learns, so equal metrics mean something.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from scripts.demo import MOBILENET_PARAMS, copy_project
from tests.conftest import dvc, md5, ran_stages, stage_env

SMALL = {**MOBILENET_PARAMS, "image_size": 96, "epochs": 6, "augment_flip": True,
         "cut_layer": "conv_pw_3_relu", "unfreeze_after": "conv_pw_3_relu", "lr": 1e-2}


def test_killed_repro_resumes_training_with_the_same_result(tmp_path, sample_dir,
                                                            mobilenet_random_weights):
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project, {**SMALL, "data_source": str(sample_dir),
                           "weights_urls": [str(mobilenet_random_weights)],
                           "weights_hash": f"md5:{md5(mobilenet_random_weights)}"})
    env = stage_env()
    dvc(project, env, "repro")
    uninterrupted = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    # The model learned: equal metrics below are not those of a constant prediction.
    assert uninterrupted["accuracy"] >= 0.75, uninterrupted

    # Again, killed (DVC and the stage, SIGKILL) once three epochs are backed up.
    process = subprocess.Popen(["dvc", "repro", "--force", "train"], cwd=project, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    backup = project / "models/.train-backup/epoch-0003.weights.h5"
    deadline = time.monotonic() + 300
    while not backup.exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    resumed = dvc(project, env, "repro")
    assert ran_stages(resumed.stdout) == ["train", "evaluate", "submit"]
    assert "train: resuming the interrupted run after epoch" in resumed.stdout + resumed.stderr
    assert json.loads((project / "metrics/evaluate/metrics.json").read_text()) == uninterrupted
    log = (project / "metrics/train/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in log[1:]] == [str(step) for step in range(6)]
