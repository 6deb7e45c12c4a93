"""One small script per DVC stage; shared code in common.py (files, params) and model.py (Keras)."""
