"""YAML specs (errors name the file and the key path) and the registry's checks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from forgejobs import Context, Job, Registry, RegistryError, Settings, SpecError, backoff
from forgejobs.specs import QueueSpec, Specs, load_specs

PROJECT = Path(__file__).resolve().parent.parent


def write_spec(directory: Path, text: str, filename: str = "queues.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text, encoding="utf-8")
    return path


# -- spec files ---------------------------------------------------------------------


def test_a_valid_spec_declares_queues_and_overrides(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        "queues:\n  email: {concurrency: 5, description: Mail}\njobs:\n  email.welcome-email: {attempts: 2}\n",
    )

    specs = load_specs(tmp_path)

    assert specs.queues == {"email": QueueSpec(concurrency=5, description="Mail")}
    assert specs.jobs["email.welcome-email"].attempts == 2
    assert specs.sources == {"queues.email": str(path), "jobs.email.welcome-email": str(path)}


def test_an_unknown_key_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queues:\n  email:\n    concurency: 5\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value) == f"{path}:3: queues.email.concurency: unknown key (did you mean 'concurrency'?)"


def test_an_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queue:\n  email: {}\n")

    with pytest.raises(SpecError, match="unknown key") as info:
        load_specs(tmp_path)

    assert str(info.value).startswith(f"{path}:1: queue: unknown key (did you mean 'queues'?)")


def test_a_bad_value_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queues:\n  email: {concurrency: 0}\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    message = str(info.value)
    assert message.startswith(f"{path}:2: queues.email.concurrency: ")
    assert "greater than or equal to 1" in message


def test_every_bad_value_in_a_file_is_reported(tmp_path: Path) -> None:
    write_spec(tmp_path, "queues:\n  email: {concurrency: x}\njobs:\n  email.welcome-email: {priority: 11}\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert "queues.email.concurrency" in str(info.value)
    assert "jobs.email.welcome-email.priority" in str(info.value)


def test_a_bad_queue_name_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queues:\n  Email: {}\n")

    with pytest.raises(SpecError, match="queue names are lower-case") as info:
        load_specs(tmp_path)

    assert str(info.value).startswith(f"{path}: queues.Email:")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queues: [email\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value).startswith(f"{path}: not valid YAML")


def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "- email\n- webhooks\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value) == f"{path}: top level must be a mapping, got list"


def test_an_empty_file_is_no_specs(tmp_path: Path) -> None:
    write_spec(tmp_path, "# nothing yet\n")

    assert load_specs(tmp_path) == Specs()


def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"absent: specs directory does not exist"):
        load_specs(tmp_path / "absent")


def test_an_empty_directory_is_no_specs(tmp_path: Path) -> None:
    assert load_specs(tmp_path) == Specs()


def test_a_queue_declared_in_two_files_is_refused(tmp_path: Path) -> None:
    first = write_spec(tmp_path, "queues:\n  email: {}\n", "a.yaml")
    second = write_spec(tmp_path, "queues:\n  email: {concurrency: 2}\n", "b.yml")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value) == f"{second}: queues.email: already declared in {first}"


def test_queues_from_several_files_are_merged(tmp_path: Path) -> None:
    write_spec(tmp_path, "queues:\n  email: {concurrency: 3}\n", "a.yaml")
    write_spec(tmp_path, "queues:\n  audit: {concurrency: 4}\n", "b.yaml")

    specs = load_specs(tmp_path)

    assert {name: q.concurrency for name, q in specs.queues.items()} == {"email": 3, "audit": 4}


def test_a_spec_backoff_is_read_by_kind(tmp_path: Path) -> None:
    write_spec(tmp_path, "jobs:\n  email.digest:\n    backoff: {kind: schedule, delays: [1, 5, 30]}\n")

    specs = load_specs(tmp_path)

    assert specs.jobs["email.digest"].backoff == backoff.schedule(1, 5, 30)


def test_a_spec_backoff_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "jobs:\n  email.digest:\n    backoff: {kind: linear, seconds: 1}\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value).startswith(f"{path}:3: jobs.email.digest.backoff:")


def test_an_indentation_slip_says_to_indent_the_setting_under_its_job(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "jobs:\n  email.welcome-email:\n  attempts: 4\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value).splitlines() == [
        f"{path}:2: jobs.email.welcome-email: the job 'email.welcome-email' has nothing under it "
        "(indent its settings below its name)",
        f"{path}:3: jobs.attempts: a job's settings must be a mapping, got 4; if 'attempts' is a setting of "
        "the job above it, indent it under that job's name",
    ]


def test_a_section_that_is_not_a_mapping_says_what_it_holds(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queues:\n  - email\n")

    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)

    assert str(info.value) == f"{path}:1: queues: must be a mapping of queue names to their settings, got ['email']"


# -- the registry ----------------------------------------------------------------------


class Digest(Job, queue="email", attempts=2, backoff=backoff.fixed(1), timeout=60, priority=5):
    def perform(self, ctx: Context) -> None: ...


class Ping(Job, queue="webhooks"):
    def perform(self, ctx: Context) -> None: ...


EMAIL_AND_WEBHOOKS = Specs(queues={"email": QueueSpec(), "webhooks": QueueSpec()})


def test_the_registry_resolves_jobs_by_name() -> None:
    registry = Registry([Digest, Ping], EMAIL_AND_WEBHOOKS)

    assert len(registry) == 2
    assert "email.digest" in registry
    assert registry.resolve("webhooks.ping").job_type is Ping


def test_two_jobs_with_one_name_are_refused() -> None:
    class First(Job, queue="email", name="email.same"):
        def perform(self, ctx: Context) -> None: ...

    class Second(Job, queue="email", name="email.same"):
        def perform(self, ctx: Context) -> None: ...

    with pytest.raises(RegistryError) as info:
        Registry([First, Second], EMAIL_AND_WEBHOOKS)

    message = str(info.value)
    assert "'email.same'" in message
    assert "First" in message
    assert "Second" in message


def test_a_job_on_an_undeclared_queue_is_refused() -> None:
    class Invoice(Job, queue="billing"):
        def perform(self, ctx: Context) -> None: ...

    with pytest.raises(
        RegistryError, match=r"Invoice \(billing.invoice\) is on queue 'billing', which no spec declares"
    ):
        Registry([Invoice], EMAIL_AND_WEBHOOKS)


def test_a_lenient_registry_declares_unknown_queues() -> None:
    class Invoice(Job, queue="billing"):
        def perform(self, ctx: Context) -> None: ...

    registry = Registry([Invoice], strict=False)

    assert "billing" in registry.queues


def test_every_problem_is_listed_at_once() -> None:
    class Invoice(Job, queue="billing"):
        def perform(self, ctx: Context) -> None: ...

    class Refund(Job, queue="payments"):
        def perform(self, ctx: Context) -> None: ...

    with pytest.raises(RegistryError) as info:
        Registry([Invoice, Refund], EMAIL_AND_WEBHOOKS)

    assert "'billing'" in str(info.value)
    assert "'payments'" in str(info.value)


def test_an_override_for_an_unknown_job_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "queues:\n  email: {}\njobs:\n  email.ghost: {attempts: 2}\n")
    specs = load_specs(tmp_path)

    with pytest.raises(RegistryError) as info:
        Registry([Digest], specs)

    assert str(info.value) == f"{path}: jobs.email.ghost: override for an unknown job"


def test_spec_values_override_class_defaults(tmp_path: Path) -> None:
    write_spec(
        tmp_path,
        "queues:\n  email: {}\n"
        "jobs:\n"
        "  email.digest:\n"
        "    attempts: 9\n"
        "    backoff: {kind: exponential, seconds: 2, factor: 3}\n"
        "    timeout: 30s\n"
        "    priority: 2\n",
    )

    registry = Registry([Digest], load_specs(tmp_path))

    options = registry.resolve("email.digest").options
    assert options.attempts == 9
    assert options.backoff == backoff.exponential(2, factor=3)
    assert options.timeout == timedelta(seconds=30)
    assert options.priority == 2
    assert options.queue == "email"  # untouched by the spec
    assert Digest.job_options().attempts == 2  # the class keeps its own defaults


def test_the_registry_applies_overrides_to_what_the_client_uses(tmp_path: Path) -> None:
    write_spec(tmp_path, "queues:\n  email: {}\njobs:\n  email.digest: {attempts: 4}\n")
    registry = Registry([Digest], load_specs(tmp_path))

    assert registry.ensure(Digest).attempts == 4


# -- the project's own catalog and specs -----------------------------------------------


def test_the_project_registry_loads_the_catalog_and_the_adr_queues() -> None:
    settings = Settings(jobs="jobs", specs=PROJECT / "specs")

    registry = Registry.load(settings)

    names = {entry.job_type.job_name() for entry in registry}
    assert {"email.welcome-email", "webhooks.deliver-webhook", "audit.record-audit-event"} <= names
    assert {name: spec.concurrency for name, spec in registry.queues.items()} == {
        "email": 5,
        "webhooks": 10,
        "stripe": 3,
        "billing": 2,
        "usage": 2,
        "files": 1,
        "audit": 5,
        "activity": 5,
    }


def test_an_override_is_validated_like_a_class_option(tmp_path: Path) -> None:
    write_spec(tmp_path, "jobs:\n  fast.echo:\n    timeout: -5\n    result_ttl: 0\n")
    with pytest.raises(SpecError) as info:
        load_specs(tmp_path)
    assert "jobs.fast.echo.timeout" in str(info.value) and "jobs.fast.echo.result_ttl" in str(info.value)


# -- where a broken project is told what to fix ------------------------------------------------------


def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, source: str) -> Settings:
    """A job package `package` (one module, `mod.py`) and a specs directory declaring queue 'mail'."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "mod.py").write_text(source)
    (tmp_path / "specs").mkdir()
    write_spec(tmp_path / "specs", "queues:\n  mail: {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return Settings(jobs=package, specs=tmp_path / "specs")


def test_a_job_on_an_undeclared_queue_is_named_by_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "from forgejobs import Job\n\n\nclass Stray(Job, queue='nowhere'):\n    def perform(self, ctx): ...\n"
    settings = project(tmp_path, monkeypatch, "undeclared_queue_jobs", source)

    with pytest.raises(RegistryError) as info:
        Registry.load(settings)

    first, second = str(info.value).splitlines()
    assert first.startswith("the job registry did not load (job package 'undeclared_queue_jobs'")
    assert "nothing can be enqueued or worked until this is fixed" in first
    assert second == (
        f"{tmp_path / 'undeclared_queue_jobs' / 'mod.py'}:4: Stray (nowhere.stray) is on queue 'nowhere', "
        "which no spec declares (declared: mail)"
    )


def test_a_class_declaration_that_fails_is_named_by_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "from forgejobs import Job\n\n\nclass Typo(Job, queue='mail', atempts=3):\n    def perform(self, ctx): ...\n"
    )
    settings = project(tmp_path, monkeypatch, "failing_declaration_jobs", source)

    with pytest.raises(RegistryError) as info:
        Registry.load(settings)

    problem = str(info.value).splitlines()[1]
    assert problem.startswith(f"{tmp_path / 'failing_declaration_jobs' / 'mod.py'}:4: OptionsError: Typo: ")
    assert "atempts" in problem and problem.endswith("(while importing failing_declaration_jobs.mod)")


def test_a_job_package_that_is_not_there_says_what_forgejobs_jobs_is(tmp_path: Path) -> None:
    write_spec(tmp_path, "queues:\n  mail: {}\n")

    with pytest.raises(RegistryError) as info:
        Registry.load(Settings(jobs="no_such_job_package_here", specs=tmp_path))

    message = str(info.value)
    assert "cannot import job package 'no_such_job_package_here': no module named 'no_such_job_package_here'" in message
    assert "FORGEJOBS_JOBS names the package that holds your job classes" in message
