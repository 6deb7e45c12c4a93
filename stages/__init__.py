"""The DVC stage scripts, one per stage of dvc.yaml, each run as `python -m stages.NAME`.

Each reads its params, calls the library (the `finetune` package), and writes its declared
outputs. Stage scripts never import each other.
"""
