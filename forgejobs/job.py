"""`Job`: the base class every job type derives from.

A job type is a Pydantic model (its fields are the payload) whose class
keywords are its options::

    class WelcomeEmail(Job, queue="email", attempts=3, backoff=backoff.exponential(1)):
        user_id: str
        def perform(self, ctx: Context) -> None: ...

Options are validated when the class is created and inherited by subclasses
(except `name` and `abstract`). Enqueue-side methods delegate to the current
client (`forgejobs.client`), so declarations never import rq or redis.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic._internal._model_construction import ModelMetaclass

from .context import Context
from .errors import OptionsError
from .options import CLASS_OPTION_NAMES, EnqueueOptions, JobOptions
from .schedule import Schedule

if TYPE_CHECKING:
    from .handle import JobHandle

J = TypeVar("J", bound="Job")


def kebab(name: str) -> str:
    """`WelcomeEmail` -> `welcome-email`, `HTTPPing` -> `http-ping`."""
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name)
    text = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"-\1", text)
    return text.lower()


class _EnqueueFields(Protocol):
    def __call__(self, **fields: Any) -> JobHandle: ...


class _EnqueueSelf(Protocol):
    def __call__(self) -> JobHandle: ...


class _Hybrid:
    """A method that is a classmethod on the class and a bound method on an instance.

    `WelcomeEmail.enqueue(user_id=...)` validates fields; `WelcomeEmail(...).enqueue()`
    enqueues an instance that is already valid.
    """

    def __init__(self, on_class: Any, on_instance: Callable[..., Any]) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_class.__doc__

    @overload
    def __get__(self, obj: None, objtype: type[Any]) -> _EnqueueFields: ...

    @overload
    def __get__(self, obj: Job, objtype: type[Any] | None = None) -> _EnqueueSelf: ...

    def __get__(self, obj: Job | None, objtype: type[Any] | None = None) -> Any:
        if obj is None:
            return self.on_class.__get__(None, objtype)
        return self.on_instance.__get__(obj, type(obj))


class _JobMeta(ModelMetaclass):
    """Refuse class keywords that are not job options before Pydantic reads some of them as config."""

    def __new__(mcs, cls_name: str, bases: tuple[type[Any], ...], namespace: dict[str, Any], **kwargs: Any) -> type:
        if bases and any(isinstance(b, _JobMeta) for b in bases):
            unknown = sorted(k for k in kwargs if not k.startswith("_") and k not in JOB_CLASS_KEYWORDS)
            if unknown:
                raise OptionsError(
                    f"{cls_name}: unknown option(s) {', '.join(unknown)}; "
                    f"valid options are {', '.join(sorted(JOB_CLASS_KEYWORDS))} "
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
            raise OptionsError(
                f"{cls.__qualname__}: unknown option(s) {', '.join(unknown)}; "
                f"valid options are {', '.join(sorted(CLASS_OPTION_NAMES | {'abstract'}))}"
            )
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

    @classmethod
    def with_options(
        cls: type[J],
        *,
        delay: Any = None,
        at: datetime | None = None,
        priority: int | None = None,
        job_id: str | None = None,
    ) -> Enqueuer[J]:
        """Per-call options, kept apart from payload fields:
        `WelcomeEmail.with_options(delay=timedelta(hours=1)).enqueue(...)`."""
        return Enqueuer(cls, EnqueueOptions(delay=delay, at=at, priority=priority, job_id=job_id))

    @classmethod
    def _enqueue_fields(cls: type[J], **fields: Any) -> JobHandle:
        """Validate `fields` as this job's payload and enqueue it."""
        return Enqueuer(cls, EnqueueOptions()).enqueue(**fields)

    def _enqueue_self(self) -> JobHandle:
        return Enqueuer(type(self), EnqueueOptions()).enqueue(self)

    enqueue: ClassVar[_Hybrid] = _Hybrid(_enqueue_fields, _enqueue_self)
    """`Job.enqueue(**fields)` validates and enqueues; `job_instance.enqueue()` enqueues that instance."""

    @classmethod
    def enqueue_many(cls: type[J], items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle]:
        """Enqueue many payloads in one round trip. All are validated before any is sent."""
        return Enqueuer(cls, EnqueueOptions()).enqueue_many(items)


class Enqueuer(typing.Generic[J]):
    """A job type bound to per-call options; made by `Job.with_options(...)`."""

    def __init__(self, job_type: type[J], options: EnqueueOptions) -> None:
        self.job_type = job_type
        self.options = options

    def enqueue(self, instance: J | None = None, /, **fields: Any) -> JobHandle:
        from .client import current_client

        if instance is not None and fields:
            raise TypeError("pass either a job instance or its fields, not both")
        item: J | Mapping[str, Any] = instance if instance is not None else fields
        return current_client().enqueue(self.job_type, [item], self.options)[0]

    def enqueue_many(self, items: Iterable[J | Mapping[str, Any]]) -> list[JobHandle]:
        from .client import current_client

        return current_client().enqueue(self.job_type, list(items), self.options)
