"""Test helpers, one subject per module: the shared real material, drawn photos, weight
files, loopback servers, running stages and DVC, and laid-out projects. Fixtures that
build them once per session are in tests/conftest.py."""
