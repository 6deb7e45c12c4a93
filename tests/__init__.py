"""The project's tests (see docs/testing.md)."""

import pytest

# Assertions in the shared helpers explain themselves as a test's own do.
pytest.register_assert_rewrite("tests.support")
