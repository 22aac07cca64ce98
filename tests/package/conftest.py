"""Fixtures of tests/package (defined in cpk_helpers so test modules can import its helpers)."""

from cpk_helpers import make_package, other_publisher, publisher

__all__ = ["make_package", "other_publisher", "publisher"]
