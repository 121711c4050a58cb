"""forgejobs: declarative background jobs for Python on Redis.

Declare a job type as a Pydantic model whose class keywords are its options::

    from forgejobs import Job, Context, backoff

    class WelcomeEmail(Job, queue="email", attempts=3, backoff=backoff.exponential(1)):
        user_id: str
        email: str

        def perform(self, ctx: Context) -> None:
            ...

    WelcomeEmail.enqueue(user_id="u1", email="a@example.com")

Run the jobs with `forgejobs worker`; test handlers with the `fake_queue`
fixture from `forgejobs.testing`. See README.md and docs/.
"""

from . import backoff
from .aio import AsyncClient, current_async_client, set_async_client, use_async_client
from .client import Client, current_client, set_client, use_client
from .context import Context
from .deadletter import DeadLetter, Reason
from .errors import (
    BackendError,
    BackendUnavailable,
    ForgeJobsError,
    JobFailed,
    JobStalled,
    JobTimeout,
    NoSuchJob,
    OptionsError,
    PayloadError,
    PayloadTooLarge,
    RegistryError,
    ResultTimeout,
    RetryLater,
    SpecError,
    UnknownJob,
    Unrecoverable,
)
from .handle import JobHandle
from .inspection import Inspector, JobDetail, JobSummary
from .job import Enqueuer, Job
from .logs import Secret
from .options import EnqueueOptions, JobOptions
from .registry import Registry
from .settings import Settings
from .status import Status

__all__ = [
    "AsyncClient",
    "Inspector",
    "JobDetail",
    "JobSummary",
    "BackendError",
    "BackendUnavailable",
    "Client",
    "Context",
    "DeadLetter",
    "Enqueuer",
    "EnqueueOptions",
    "ForgeJobsError",
    "Job",
    "JobFailed",
    "JobStalled",
    "JobTimeout",
    "JobHandle",
    "JobOptions",
    "NoSuchJob",
    "OptionsError",
    "PayloadError",
    "PayloadTooLarge",
    "Reason",
    "Registry",
    "RegistryError",
    "ResultTimeout",
    "RetryLater",
    "Secret",
    "Settings",
    "SpecError",
    "Status",
    "UnknownJob",
    "Unrecoverable",
    "backoff",
    "current_async_client",
    "current_client",
    "set_async_client",
    "set_client",
    "use_async_client",
    "use_client",
]

__version__ = "0.1.0"
