"""TF_CONFIG values, as each worker of a multi-worker training reads its place."""

from __future__ import annotations

import json

TWO = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}  # a cluster of two workers


def tf_config(cluster: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})
