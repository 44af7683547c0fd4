"""Fixtures the chaos tests share with the integration tests (a seeded simulator and its URL)."""

from tests.integration.conftest import sim, sim_url  # noqa: F401 (re-exported fixtures)
