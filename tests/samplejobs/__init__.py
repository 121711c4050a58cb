"""Job types used by the integration tests (loaded by worker subprocesses via FORGEJOBS_JOBS)."""
