"""The job catalog of a SaaS backend: one module per queue.

`forgejobs` discovers every concrete `Job` subclass in this package; the
queues they run on are declared in `specs/queues.yaml`.
"""
