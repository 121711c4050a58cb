"""`Job`: the base class every job type derives from.

A job type is a Pydantic model (its fields are the payload) whose class
keywords are its options::

    class WelcomeEmail(Job, queue="email", attempts=3, backoff=backoff.exponential(1)):
        user_id: str
        def perform(self, ctx: Context) -> None: ...

Options are validated when the class is created and inherited by subclasses
(except `name` and `abstract`). Enqueue-side methods delegate to the current
client (`forgejobs.client`; `aenqueue` to `forgejobs.aio`), so declarations never
import rq or redis. The handles they return are typed by `perform`'s return
annotation: `WelcomeEmail.enqueue(...).result()` is whatever `perform` returns.
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic._internal._model_construction import ModelMetaclass
from typing_extensions import TypeVar

from .context import Context
from .errors import OptionsError
from .logs import pydantic_secret_fields
from .options import CLASS_OPTION_NAMES, EnqueueOptions, JobOptions
from .schedule import Schedule

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client
    from .handle import JobHandle

J = TypeVar("J", bound="Job", default="Job")
R = TypeVar("R", default=Any)
R_co = TypeVar("R_co", covariant=True)
J_co = TypeVar("J_co", covariant=True)


def kebab(name: str) -> str:
    """`WelcomeEmail` -> `welcome-email`, `HTTPPing` -> `http-ping`."""
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name)
    text = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"-\1", text)
    return text.lower()


# -- typing: the result type comes from `perform`'s return annotation ------------------------
#
# A type checker matches a job class (or instance) against these protocols and reads `R` off
# `perform`, so `WelcomeEmail.enqueue(...)` is a `JobHandle[EmailOutcome]` with nothing written in
# user code. A coroutine `perform` is matched first, so `async def perform(...) -> int` gives `int`.
# They exist for type checkers only; at run time the same objects are plain descriptors.


class _Performs(Protocol[R_co]):
    def perform(self, ctx: Context[Any], /) -> R_co: ...


class _PerformsAsync(Protocol[R_co]):
    def perform(self, ctx: Context[Any], /) -> Coroutine[Any, Any, R_co]: ...


class _JobClass(Protocol[J_co, R_co]):
    """A job class as an object: builds `J_co`, and its `perform` returns `R_co`."""

    def __call__(self, *args: Any, **kwargs: Any) -> J_co: ...
    def perform(self, job: Any, ctx: Context[Any], /) -> R_co: ...


class _AsyncJobClass(Protocol[J_co, R_co]):
    def __call__(self, *args: Any, **kwargs: Any) -> J_co: ...
    def perform(self, job: Any, ctx: Context[Any], /) -> Coroutine[Any, Any, R_co]: ...


class _EnqueueFields(Protocol[R_co]):
    def __call__(self, **fields: Any) -> JobHandle[R_co]: ...


class _EnqueueSelf(Protocol[R_co]):
    def __call__(self) -> JobHandle[R_co]: ...


class _AEnqueueFields(Protocol[R_co]):
    def __call__(self, **fields: Any) -> Coroutine[Any, Any, JobHandle[R_co]]: ...


class _AEnqueueSelf(Protocol[R_co]):
    def __call__(self) -> Coroutine[Any, Any, JobHandle[R_co]]: ...


class _Hybrid:
    """A method that is a classmethod on the class and a bound method on an instance.

    `WelcomeEmail.enqueue(user_id=...)` validates fields; `WelcomeEmail(...).enqueue()`
    enqueues an instance that is already valid.
    """

    def __init__(self, on_class: Any, on_instance: Callable[..., Any]) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_class.__doc__

    def _bind(self, obj: Job | None, objtype: type[Any] | None) -> Any:
        if obj is None:
            return self.on_class.__get__(None, objtype)
        return self.on_instance.__get__(obj, type(obj))


class _Enqueue(_Hybrid):
    """`enqueue`, typed by what the job's `perform` returns."""

    @overload
    def __get__(self, obj: None, objtype: type[_PerformsAsync[R]]) -> _EnqueueFields[R]: ...
    @overload
    def __get__(self, obj: None, objtype: type[_Performs[R]]) -> _EnqueueFields[R]: ...
    @overload
    def __get__(self, obj: _PerformsAsync[R], objtype: type[Any] | None = None) -> _EnqueueSelf[R]: ...
    @overload
    def __get__(self, obj: _Performs[R], objtype: type[Any] | None = None) -> _EnqueueSelf[R]: ...

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self._bind(obj, objtype)


class _AEnqueue(_Hybrid):
    """`aenqueue`, typed by what the job's `perform` returns."""

    @overload
    def __get__(self, obj: None, objtype: type[_PerformsAsync[R]]) -> _AEnqueueFields[R]: ...
    @overload
    def __get__(self, obj: None, objtype: type[_Performs[R]]) -> _AEnqueueFields[R]: ...
    @overload
    def __get__(self, obj: _PerformsAsync[R], objtype: type[Any] | None = None) -> _AEnqueueSelf[R]: ...
    @overload
    def __get__(self, obj: _Performs[R], objtype: type[Any] | None = None) -> _AEnqueueSelf[R]: ...

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self._bind(obj, objtype)


def _unknown_options(unknown: Iterable[str], valid: Iterable[str]) -> str:
    """`unknown option(s) atempts (did you mean 'attempts'?); valid options are ...`."""
    names = sorted(valid)
    shown = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        shown.append(f"{name} (did you mean {close[0]!r}?)" if close else name)
    return f"unknown option(s) {', '.join(shown)}; valid options are {', '.join(names)}"


class _JobMeta(ModelMetaclass):
    """Refuse class keywords that are not job options before Pydantic reads some of them as config."""

    def __new__(mcs, cls_name: str, bases: tuple[type[Any], ...], namespace: dict[str, Any], **kwargs: Any) -> type:
        if bases and any(isinstance(b, _JobMeta) for b in bases):
            unknown = sorted(k for k in kwargs if not k.startswith("_") and k not in JOB_CLASS_KEYWORDS)
            if unknown:
                raise OptionsError(
                    f"{cls_name}: {_unknown_options(unknown, JOB_CLASS_KEYWORDS)} "
                    "(Pydantic model config belongs in model_config)"
                )
        return super().__new__(mcs, cls_name, bases, namespace, **kwargs)


JOB_CLASS_KEYWORDS = CLASS_OPTION_NAMES | {"abstract", "every"}


class Job(BaseModel, metaclass=_JobMeta):
    """Base class of job types. Subclass it with class keyword options."""

    model_config = ConfigDict(extra="forbid", ignored_types=(_Hybrid,))

    __forgejobs_declared__: ClassVar[dict[str, Any]] = {}
    __forgejobs_options__: ClassVar[JobOptions] = JobOptions()
    __forgejobs_abstract__: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Pydantic hands class keywords to __init_subclass__ while it builds the
        # model; we read them in __pydantic_init_subclass__, once the model exists.
        super().__init_subclass__()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        abstract = bool(kwargs.pop("abstract", False))
        if "every" in kwargs:
            if "schedule" in kwargs:
                raise OptionsError(f"{cls.__qualname__}: give schedule= or every=, not both")
            try:
                kwargs["schedule"] = Schedule(every=kwargs.pop("every"))
            except ValidationError as exc:
                raise OptionsError(f"{cls.__qualname__}: option every: {exc.errors()[0]['msg']}") from None
        unknown = sorted(set(kwargs) - CLASS_OPTION_NAMES)
        if unknown:
            raise OptionsError(f"{cls.__qualname__}: {_unknown_options(unknown, CLASS_OPTION_NAMES | {'abstract'})}")
        # A subclass gets its own name and does not repeat its parent's schedule.
        inherited = {k: v for k, v in cls.__forgejobs_declared__.items() if k not in ("name", "schedule")}
        declared = {**inherited, **kwargs}
        try:
            options = JobOptions(**declared)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise OptionsError(f"{cls.__qualname__}: option {key}={first.get('input')!r}: {first['msg']}") from None
        limit_key = options.rate_limit_key
        if isinstance(limit_key, str) and limit_key not in cls.model_fields:
            raise OptionsError(f"{cls.__qualname__}: rate_limit_key {limit_key!r} is not one of its fields")
        dedupe = options.dedupe_key
        if isinstance(dedupe, tuple):
            missing = [f for f in dedupe if f not in cls.model_fields]
            if missing:
                raise OptionsError(f"{cls.__qualname__}: dedupe_key names unknown field(s) {', '.join(missing)}")
        if options.unique_for is not None and options.debounce is not None:
            raise OptionsError(f"{cls.__qualname__}: give unique_for or debounce, not both")
        if dedupe is not None and options.unique_for is None and options.debounce is None:
            raise OptionsError(f"{cls.__qualname__}: dedupe_key needs unique_for or debounce")
        concurrency_key = options.concurrency_key
        if isinstance(concurrency_key, str) and concurrency_key not in cls.model_fields:
            raise OptionsError(f"{cls.__qualname__}: concurrency_key {concurrency_key!r} is not one of its fields")
        if (concurrency_key is None) != (options.concurrency_limit is None):
            raise OptionsError(f"{cls.__qualname__}: give concurrency_key and concurrency_limit together")
        if limit_key is not None and options.rate_limit is None:
            raise OptionsError(f"{cls.__qualname__}: rate_limit_key needs a rate_limit")
        pydantic_secrets = pydantic_secret_fields(cls)
        if pydantic_secrets:
            raise OptionsError(
                f"{cls.__qualname__}: field {', '.join(pydantic_secrets)} is a pydantic SecretStr/SecretBytes, which "
                "pydantic writes to JSON as '**********', so the worker would receive the mask; declare it "
                "`Annotated[str, forgejobs.Secret]` instead (masked wherever forgejobs shows it, sent as it is)"
            )
        if not abstract:
            if options.queue is None:
                raise OptionsError(f"{cls.__qualname__}: needs a queue= option (or abstract=True for a base class)")
            if cls.perform is Job.perform:
                raise OptionsError(f"{cls.__qualname__}: must define perform(self, ctx)")
            if options.name is None:
                options = options.model_copy(update={"name": f"{options.queue}.{kebab(cls.__name__)}"})
        cls.__forgejobs_declared__ = declared
        cls.__forgejobs_options__ = options
        cls.__forgejobs_abstract__ = abstract

    # -- the handler --------------------------------------------------------

    def perform(self, ctx: Context[Any]) -> Any:
        """Run the job. The return value (JSON-serialisable, or a Pydantic model) is stored as its result."""
        raise NotImplementedError

    # -- declarations ---------------------------------------------------------

    @classmethod
    def job_name(cls) -> str:
        """The stable name this job type is stored and looked up under."""
        name = cls.__forgejobs_options__.name
        if name is None:
            raise OptionsError(f"{cls.__qualname__} is abstract and has no job name")
        return name

    @classmethod
    def job_options(cls) -> JobOptions:
        """The options declared on the class (spec overrides are applied by the registry)."""
        return cls.__forgejobs_options__

    @classmethod
    def is_abstract(cls) -> bool:
        return cls.__forgejobs_abstract__

    @classmethod
    def result_adapter(cls) -> TypeAdapter[Any] | None:
        """A validator for the declared return type of `perform`, or None if undeclared."""
        cached = cls.__dict__.get("_forgejobs_result_adapter")
        if cached is not None:
            return cached if isinstance(cached, TypeAdapter) else None
        hints = typing.get_type_hints(cls.perform)
        ret = hints.get("return", inspect.Signature.empty)
        adapter: TypeAdapter[Any] | None = None
        if ret not in (inspect.Signature.empty, Any, type(None), None):
            adapter = TypeAdapter(ret)
        type.__setattr__(cls, "_forgejobs_result_adapter", adapter if adapter is not None else False)
        return adapter

    # -- enqueueing -------------------------------------------------------------

    @overload
    @classmethod
    def with_options(
        cls: _AsyncJobClass[J, R],
        *,
        delay: Any = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        client: Client | AsyncClient | None = None,
    ) -> Enqueuer[J, R]: ...
    @overload
    @classmethod
    def with_options(
        cls: _JobClass[J, R],
        *,
        delay: Any = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        client: Client | AsyncClient | None = None,
    ) -> Enqueuer[J, R]: ...

    @classmethod
    def with_options(
        cls,
        *,
        delay: Any = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        client: Client | AsyncClient | None = None,
    ) -> Enqueuer[Any, Any]:
        """Per-call options, kept apart from payload fields:
        `WelcomeEmail.with_options(delay=timedelta(hours=1)).enqueue(...)`.

        `client` enqueues through that client instead of the current one (e.g. one a web
        framework's dependency provides); an `AsyncClient` serves `aenqueue` and, through its
        sync sibling, `enqueue`."""
        options = EnqueueOptions(delay=delay, at=at, priority=priority, job_id=job_id)
        return Enqueuer(cls, options, client)

    @classmethod
    def _enqueue_fields(cls, **fields: Any) -> JobHandle[Any]:
        """Validate `fields` as this job's payload and enqueue it."""
        return Enqueuer(cls, EnqueueOptions()).enqueue(**fields)

    def _enqueue_self(self) -> JobHandle[Any]:
        return Enqueuer(type(self), EnqueueOptions()).enqueue(self)

    enqueue: ClassVar[_Enqueue] = _Enqueue(_enqueue_fields, _enqueue_self)
    """`Job.enqueue(**fields)` validates and enqueues; `job_instance.enqueue()` enqueues that instance."""

    @classmethod
    async def _aenqueue_fields(cls, **fields: Any) -> JobHandle[Any]:
        """Validate `fields` as this job's payload and enqueue it, awaiting Redis (see `forgejobs.aio`)."""
        return await Enqueuer(cls, EnqueueOptions()).aenqueue(**fields)

    async def _aenqueue_self(self) -> JobHandle[Any]:
        return await Enqueuer(type(self), EnqueueOptions()).aenqueue(self)

    aenqueue: ClassVar[_AEnqueue] = _AEnqueue(_aenqueue_fields, _aenqueue_self)
    """`await Job.aenqueue(**fields)` and `await job_instance.aenqueue()`: `enqueue` for asyncio."""

    @overload
    @classmethod
    def enqueue_many(cls: _AsyncJobClass[J, R], items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle[R]]: ...
    @overload
    @classmethod
    def enqueue_many(cls: _JobClass[J, R], items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle[R]]: ...

    @classmethod
    def enqueue_many(cls, items: Iterable[Any]) -> list[JobHandle[Any]]:
        """Enqueue many payloads in one round trip. All are validated before any is sent."""
        return Enqueuer(cls, EnqueueOptions()).enqueue_many(items)

    @overload
    @classmethod
    async def aenqueue_many(
        cls: _AsyncJobClass[J, R], items: Iterable[J | Mapping[str, Any]]
    ) -> list[JobHandle[R]]: ...
    @overload
    @classmethod
    async def aenqueue_many(cls: _JobClass[J, R], items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle[R]]: ...

    @classmethod
    async def aenqueue_many(cls, items: Iterable[Any]) -> list[JobHandle[Any]]:
        """`enqueue_many` for asyncio: validated first, then one awaited round trip."""
        return await Enqueuer(cls, EnqueueOptions()).aenqueue_many(items)


class Enqueuer(typing.Generic[J, R]):
    """A job type bound to per-call options (and perhaps a client); made by `Job.with_options(...)`.

    `J` is the job class, `R` what its `perform` returns."""

    def __init__(self, job_type: type[J], options: EnqueueOptions, client: Client | AsyncClient | None = None) -> None:
        self.job_type = job_type
        self.options = options
        self.client = client

    def _items(self, instance: J | None, fields: Mapping[str, Any]) -> list[J | Mapping[str, Any]]:
        if instance is not None and fields:
            raise TypeError("pass either a job instance or its fields, not both")
        return [instance if instance is not None else fields]

    def _sync_client(self) -> Client:
        from .client import Client, current_client

        if self.client is None:
            return current_client()
        return self.client if isinstance(self.client, Client) else self.client.sync

    def enqueue(self, instance: J | None = None, /, **fields: Any) -> JobHandle[R]:
        return self._sync_client().enqueue(self.job_type, self._items(instance, fields), self.options)[0]

    def enqueue_many(self, items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle[R]]:
        return self._sync_client().enqueue(self.job_type, list(items), self.options)

    async def aenqueue(self, instance: J | None = None, /, **fields: Any) -> JobHandle[R]:
        from .aio import enqueue_async

        items = self._items(instance, fields)
        return (await enqueue_async(self.client, self.job_type, items, self.options))[0]

    async def aenqueue_many(self, items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle[R]]:
        from .aio import enqueue_async

        return await enqueue_async(self.client, self.job_type, list(items), self.options)
