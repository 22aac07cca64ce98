"""Orchestrator tests; the Azurite fixture they use lives in tests/conftest.py (shared with tests/hub)."""
