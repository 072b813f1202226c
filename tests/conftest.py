"""Fixtures shared by the test files (helpers that are not fixtures live in tests/helpers.py)."""

import pytest


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No data set or pretrained weight from the user's caches: ``MULTIRATE_DATA`` and ``TORCH_HOME``
    point into the test's tmp_path (empty), so a test that needs a file must make it."""
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path
