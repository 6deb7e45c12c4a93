"""Training the layers above the frozen part: batches, determinism, checkpoints and exact
resume, the dvclive log, the inputs (features or pixels), the fit loop, multi-worker."""
