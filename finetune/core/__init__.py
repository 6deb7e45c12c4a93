"""What every stage needs: params, paths, errors, atomic outputs, progress lines and how
the process computes. Nothing here imports TensorFlow at import time."""
