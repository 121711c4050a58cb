"""Property tests: `load_specs` on hostile spec directories.

Whatever a `*.yaml` file holds (random documents, the real specs with wrong types, unknown keys, bad durations
or bad cron patterns, text that is not YAML), `load_specs` either succeeds or raises `SpecError` whose message
names the file (and, for a bad value, the key path): never another exception, never a traceback.

The inputs that once crashed it are kept as explicit examples of the tests at the end; the
general properties keep away from them (bounded numbers, shallow nesting, UTF-8 text) so that they go on
guarding everything else.
"""

from __future__ import annotations

import copy
import re
import string
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st

from forgejobs.errors import SpecError
from forgejobs.specs import Specs, load_specs

ROOT = Path(__file__).resolve().parent.parent
REAL = {
    name: yaml.safe_load((ROOT / "specs" / name).read_text(encoding="utf-8"))
    for name in ("queues.yaml", "schedules.yaml")
}
SETTINGS = fuzz_settings(
    database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def load(files: dict[str, str | bytes]) -> tuple[Specs | None, SpecError | None, dict[str, Path]]:
    """Write `files` into a fresh specs directory and load it: the specs, or the SpecError (anything else raises)."""
    directory = Path(tempfile.mkdtemp(prefix="fuzz-specs-"))
    paths = {}
    for name, content in files.items():
        path = paths[name] = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    try:
        return load_specs(directory), None, paths
    except SpecError as exc:
        message = str(exc)
        assert message, "an empty SpecError"
        assert "Traceback" not in message
        lines = message.splitlines()
        if "not valid YAML" in lines[0]:
            lines = lines[:1]  # then the parser's own report follows, over several lines
        for line in lines:
            assert any(names_file(line, p) for p in paths.values()), f"a line that names no file: {line!r}"
        return None, exc, paths


def names_file(line: str, path: Path) -> bool:
    """The line starts `<file>: ` or `<file>:<line>: `."""
    return re.match(rf"{re.escape(str(path))}(:\d+)?: ", line) is not None


def reported(exc: SpecError, path: Path) -> list[str]:
    """The key paths a SpecError reports for one file (`<file>[:<line>]: <key path>: <message>` per line)."""
    prefix = re.compile(rf"{re.escape(str(path))}(:\d+)?: ")
    found = [prefix.match(line) for line in str(exc).splitlines()]
    return [m.string[m.end() :].split(": ", 1)[0] for m in found if m is not None]


# -- values ------------------------------------------------------------------------------------------------

# Bounded numbers here: out-of-range durations have their own test below.
numbers = st.one_of(
    st.integers(-(10**9), 10**9), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
)
durations = st.one_of(
    st.sampled_from(["30s", "5m", "2h", "1d", "500ms", "0s", "-1s", "abc", "", "1 week", "10", "1.5.2s", "s", "1y"]),
    st.from_regex(r"\A[0-9]{1,6}(\.[0-9]{1,3})?\s?(ms|s|m|h|d|x)?\Z"),
)
crons = st.one_of(
    st.sampled_from(
        [
            "0 0 * * *",
            "* * * * *",
            "*/0 * * * *",
            "61 * * * *",
            "0 25 * * *",
            "0 0 32 * *",
            "0 0 * 13 *",
            "0 0 * * 8",
            "0 0 * *",
            "0 0 * * * *",
            "@daily",
            "L * * * *",
            "H H * * *",
            "0 0 31 2 *",
            "a b c d e",
            "",
            "1-0 * * * *",
            "*/99999999999999999999 * * * *",
        ]
    ),
    st.lists(st.sampled_from(["*", "0", "5", "*/5", "1-3", "1,2", "?", "L", "W", "#", "-", "/", "99"]), max_size=7).map(
        " ".join
    ),
    st.text(max_size=20),
)
zones = st.one_of(
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Mars/Olympus", "", ".", "..", "/etc/passwd", "UTC/"]),
    st.text(alphabet=string.ascii_letters + "/_-+0123456789", max_size=15).filter(lambda z: not _is_directory_zone(z)),
)


def _is_directory_zone(name: str) -> bool:
    """A zone name that is a directory of the tz database (`America`): ZoneInfo raises IsADirectoryError."""
    import importlib.resources

    try:
        return bool(name) and importlib.resources.files("tzdata").joinpath("zoneinfo", *name.split("/")).is_dir()
    except (ModuleNotFoundError, ValueError, OSError):
        return False


# Keys without control or line-break characters: a key is printed as it is in the message, so a key holding a
# line break would split one error line in two (the message stays a SpecError; only this test's parsing breaks).
key_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=10)

scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12), durations, crons, zones)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(key_text, inner, max_size=3)),
    max_leaves=10,
)
FIELDS = [
    # queues
    "concurrency",
    "global_concurrency",
    "mode",
    "description",
    "rate_limit",
    "retention",
    "max",
    "per",
    "completed",
    "failed",
    "count",
    "age",
    # jobs
    "attempts",
    "backoff",
    "kind",
    "seconds",
    "factor",
    "max_seconds",
    "jitter",
    "delays",
    "priority",
    "timeout",
    "max_payload_bytes",
    "result_ttl",
    "failure_ttl",
    "max_stalled",
    # schedules
    "job",
    "payload",
    "cron",
    "every",
    "tz",
    "overlap",
    "catch_up",
    "max_catch_up",
    "misfire_grace",
    "enabled",
]
keys = st.one_of(st.sampled_from(FIELDS), key_text, st.integers(-5, 5), st.booleans(), st.none())
known_values = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=4),
    st.lists(scalars, max_size=3),
)
entries = st.dictionaries(
    keys, st.one_of(known_values, st.dictionaries(st.sampled_from(FIELDS), known_values)), max_size=4
)
sections = st.dictionaries(
    st.one_of(st.sampled_from(["queues", "jobs", "schedules"]), keys),
    st.one_of(st.dictionaries(keys, entries, max_size=3), values),
    max_size=4,
)
documents = st.one_of(sections, values)


# -- 1. random documents -----------------------------------------------------------------------------------


@fuzz_settings(SETTINGS, max_examples=250)
@given(first=documents, second=st.one_of(st.none(), documents), flow=st.booleans())
def test_random_documents_load_or_raise_spec_error(first: Any, second: Any, flow: bool) -> None:
    files: dict[str, str | bytes] = {"a.yaml": yaml.safe_dump(first, default_flow_style=flow, allow_unicode=True)}
    if second is not None:
        files["b.yml"] = yaml.safe_dump(second, allow_unicode=True)
    specs, error, _ = load(files)
    assert (specs is None) != (error is None)


@fuzz_settings(SETTINGS, max_examples=200)
@given(text=st.text(max_size=200))
@example(text="queues: [unclosed")
@example(text="\t- a\n: b")
@example(text="a: &x [*x]\n")
@example(text="!!python/object/apply:os.system ['true']")
@example(text="---\na: 1\n---\nb: 2\n")
@example(text="[" * 200 + "]" * 200)
def test_random_text_loads_or_raises_spec_error(text: str) -> None:
    load({"text.yaml": text})


# -- 2. mutations of the real specs ------------------------------------------------------------------------


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a document (mapping keys and list indexes)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths_of(child, (*prefix, key)))
    return found


def parent_of(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for key in path[:-1]:
        node = node[key]
    return node


MUTATIONS = ["replace", "delete", "unknown key", "rename", "bad duration", "bad cron", "retype container"]


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[dict[str, Any], str, list[tuple[Any, ...]], list[str]]:
    """The real spec files with 1-3 mutations in one of them: (documents, file, mutated paths, mutations)."""
    documents = copy.deepcopy(REAL)
    name = draw(st.sampled_from(sorted(documents)))
    document = documents[name]
    where: list[tuple[Any, ...]] = []
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths_of(document)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = parent_of(document, path)
        key = path[-1]
        mutation = draw(st.sampled_from(MUTATIONS))
        if mutation == "replace":
            parent[key] = draw(values)
        elif mutation == "retype container":
            parent[key] = (
                draw(st.one_of(st.lists(scalars, max_size=2), scalars)) if isinstance(parent[key], dict) else {}
            )
        elif mutation == "bad duration":
            parent[key] = draw(durations)
        elif mutation == "bad cron":
            parent[key] = draw(crons)
        elif mutation == "delete":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif mutation == "unknown key":
            target = parent[key] if isinstance(parent[key], dict) else parent
            if not isinstance(target, dict):
                continue
            new = draw(st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10))
            target[new] = draw(values)
            path = (*path, new) if target is not parent else (*path[:-1], new)
        elif mutation == "rename" and isinstance(parent, dict):
            new = draw(st.one_of(key_text, st.sampled_from(FIELDS)))
            parent[new] = parent.pop(key)
            where.append(path)  # the old place lost what it held (a required field, say)
            path = (*path[:-1], new)
        where.append(path)
        done.append(f"{mutation} {path}")
    return documents, name, where, done


@fuzz_settings(SETTINGS, max_examples=300)
@given(case=mutated_specs())
def test_mutated_real_specs_load_or_name_the_file_and_key(
    case: tuple[dict[str, Any], str, list[tuple[Any, ...]], list[str]],
) -> None:
    documents, name, where, done = case
    specs, error, paths = load({n: yaml.safe_dump(d, allow_unicode=True) for n, d in documents.items()})
    if error is None:
        return
    # The real files load: every error comes from a mutation, and is reported at the mutated key path, deeper
    # (inside a value that replaced it), or at an ancestor (a whole-entry check such as "give exactly one of
    # 'cron' and 'every'" is reported on the entry; an empty file on the file).
    mutated = [".".join(str(k) for k in path) for path in where]
    lines = [line for line in str(error).splitlines() if "already declared in" not in line]
    for key in reported(error, paths[name]):
        related = [m for m in mutated if key == m or key.startswith(m + ".") or m.startswith(key + ".")]
        assert related, (key, done, str(error))
    assert all(names_file(line, paths[name]) for line in lines), (done, str(error))


# -- 3. known crashes: each is a bug, kept as an explicit example -------------------------------------------


@fuzz_settings(SETTINGS, max_examples=20, report_multiple_bugs=False)
@given(raw=st.binary(min_size=1, max_size=64).filter(lambda b: not _is_utf8(b)))
@example(raw=b"\xff\xfe\x00")
@example(raw=b"queues:\n  fast: {description: caf\xe9}\n")
def test_spec_file_that_is_not_utf8_raises_spec_error(raw: bytes) -> None:
    load({"latin1.yaml": raw})


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@fuzz_settings(SETTINGS, max_examples=20, report_multiple_bugs=False)
@given(
    field=st.sampled_from(["jobs.a.b.timeout", "jobs.a.b.result_ttl", "queues.q.rate_limit.per", "schedules.s.every"]),
    value=st.one_of(
        st.sampled_from([".inf", "-.inf", "1.0e+20", "'1000000000d'", "'99999999999999s'"]),
        st.floats(min_value=1e15, max_value=1e300).map(lambda x: f"{x:.1f}"),
    ),
)
@example(field="jobs.a.b.timeout", value=".inf")
@example(field="queues.q.rate_limit.per", value="'1000000000d'")
@example(field="schedules.s.every", value="1.0e+20")
def test_out_of_range_durations_raise_spec_error(field: str, value: str) -> None:
    parts = field.split(".")
    if parts[0] == "schedules":
        text = f"schedules:\n  s:\n    job: a.b\n    every: {value}\n"
    elif parts[0] == "queues":
        text = f"queues:\n  q:\n    rate_limit: {{max: 1, per: {value}}}\n"
    else:
        text = f"jobs:\n  a.b:\n    {parts[-1]}: {value}\n"
    load({"durations.yaml": text})


@fuzz_settings(SETTINGS, max_examples=10, report_multiple_bugs=False)
@given(zone=st.sampled_from(["America", "Europe", "Etc", "Asia", "Africa"]))
@example(zone="America")
def test_tz_naming_a_zone_directory_raises_spec_error(zone: str) -> None:
    load({"schedules.yaml": f"schedules:\n  s:\n    job: a.b\n    cron: '0 0 * * *'\n    tz: {zone}\n"})


@fuzz_settings(SETTINGS, max_examples=5, report_multiple_bugs=False)
@given(depth=st.integers(600, 2000), opener=st.sampled_from(["[", "{a: "]))
@example(depth=1000, opener="[")
def test_deeply_nested_document_raises_spec_error(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    load({"deep.yaml": opener * depth + "1" + closer * depth})
