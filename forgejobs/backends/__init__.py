"""Backends: the interface (`base`), Redis via RQ (`rq`), and in-memory (`fake`)."""
