"""finetune.training.checkpoints: multi-worker training resumes no backup."""

from __future__ import annotations

from finetune.training.checkpoints import resumable_backup
from finetune.training.outputs import Outputs


def test_multi_worker_training_does_not_resume_a_backup(tmp_path, capsys):
    """The chief alone holds backups: a resumed chief and fresh workers would train apart."""
    outputs = Outputs(tmp_path)
    for multi_worker, resumes in ((False, True), (True, False)):
        outputs.backup.mkdir(parents=True, exist_ok=True)
        (outputs.backup / "run-id").write_text("this run")
        (outputs.backup / "epoch-0001.weights.h5").write_bytes(b"weights")
        assert resumable_backup("this run", outputs, multi_worker) == resumes
    assert "multi-worker training cannot resume" in capsys.readouterr().err
    assert [path.name for path in outputs.backup.iterdir()] == ["run-id"]  # started afresh
