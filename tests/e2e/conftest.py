"""Fixtures every end-to-end test file may ask for by name."""

from tests.support.serve import served

__all__ = ["served"]
