"""The wheel a user installs: the framework alone, its declared dependencies, and an outside project using it.

Builds the wheel from this checkout, installs it into a fresh virtualenv (from the machine's package
index, as a user's `pip install` would), and works a tiny project that is not this repository: its own
job package, its own specs, a `fake_queue` test found through the installed pytest plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What only the example catalog (jobs/) and the demo need: never a requirement of the framework itself.
CATALOG_ONLY = {"stripe", "sqlalchemy", "httpx", "fakeredis", "psycopg", "jinja2", "email-validator"}

OUTSIDE_JOB = '''
from forgejobs import Context, Job


class Greet(Job, queue="greetings", attempts=2):
    """Greets someone; the outside project's only job."""

    name: str

    def perform(self, ctx: Context) -> str:
        return f"hello {self.name}"
'''

OUTSIDE_TEST = """
from shop_jobs.greet import Greet


def test_greet_is_enqueued_and_performed(fake_queue):
    Greet.enqueue(name="ada")
    fake_queue.assert_enqueued(Greet, name="ada")
    assert fake_queue.drain().succeeded == 1
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, ROOT, cwd=out)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("forgejobs-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and pytest installed; returns its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    done = run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, "pytest", cwd=env_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    return bin_dir


def test_the_wheel_holds_the_framework_and_no_catalog(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"forgejobs"}
    assert "forgejobs/runtime/scripts/fetch.lua" in names
    assert "forgejobs/py.typed" in names
    assert "forgejobs/dashboard/templates/base.html" in names  # the dashboard renders from package data
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    names_required = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in required}
    assert names_required and not names_required & CATALOG_ONLY, required
    assert "forgejobs = forgejobs.testing" in entry_points  # the pytest plugin
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert {"embedded", "postgres", "catalog"} <= extras


def test_the_installed_framework_works_an_outside_project(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "shop"
    (project / "shop_jobs").mkdir(parents=True)
    (project / "shop_jobs" / "__init__.py").write_text("")
    (project / "shop_jobs" / "greet.py").write_text(OUTSIDE_JOB)
    (project / "specs").mkdir()
    (project / "specs" / "queues.yaml").write_text("queues:\n  greetings: {concurrency: 2}\n")
    (project / "tests").mkdir()
    (project / "tests" / "test_greet.py").write_text(OUTSIDE_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORGEJOBS_", "PYTEST_", "COV_"))}
    env["FORGEJOBS_JOBS"] = "shop_jobs"

    helped = run(installed / "forgejobs", "--help", cwd=project, env=env)
    assert helped.returncode == 0 and "Usage: forgejobs" in helped.stdout, helped.stderr

    no_catalog = run(installed / "python", "-c", "import jobs", cwd=tmp_path, env=env)
    assert no_catalog.returncode != 0 and "No module named 'jobs'" in no_catalog.stderr

    checked = run(installed / "forgejobs", "check", cwd=project, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "greetings.greet" in checked.stdout

    # In a project whose package is not called `jobs`, the default names what to set.
    unset = {k: v for k, v in env.items() if k != "FORGEJOBS_JOBS"}
    refused = run(installed / "forgejobs", "check", cwd=project, env=unset)
    assert refused.returncode == 1
    assert "FORGEJOBS_JOBS names the package that holds your job classes" in " ".join(refused.stderr.split())

    # The demo is this repository's example application, not part of the distribution: it says where it is.
    demo = run(installed / "forgejobs", "demo", cwd=project, env=env)
    assert demo.returncode == 1 and "in a clone of it, run ./dev demo" in " ".join(demo.stderr.split())

    tested = run(installed / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=project, env=env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout

    freeze = run(installed / "python", "-m", "pip", "freeze", cwd=project, env=env).stdout.lower()
    present = {line.split("==")[0].split(" @ ")[0] for line in freeze.splitlines()}
    assert not present & CATALOG_ONLY, present & CATALOG_ONLY
