"""Fixtures the integration test files may ask for by name."""

from tests.support.dns_server import dns_server

__all__ = ["dns_server"]
