"""The Dockerfiles cannot be built here (no Docker engine): check what they copy exists, that they run
as a non-root user, and that the pinned set they install (constraints.txt) resolves together."""

import re
from importlib.metadata import PackageNotFoundError, distribution

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _instructions(path):
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_there_are_component_cuda_and_serving_images():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cuda", "Dockerfile.serving", "Dockerfile.mlflow"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_and_the_image_runs_as_non_root(dockerfile):
    lines = _instructions(dockerfile)
    for line in lines:
        if line.upper().startswith("COPY") and "--from=" not in line:
            sources = line.split()[1:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    final = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM")) :]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("0", "root"), f"{dockerfile.name}: the final stage must run as a non-root user"
    installs = [line for line in lines if "pip install" in line and "torch==" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), "installs must use the pinned set"
    assert not any(
        re.search(r"(?i)(secret|password|token|aws_access)", line)
        for line in lines
        if line.upper().startswith(("ENV", "ARG"))
    ), "no secrets baked into the image"


def test_the_pinned_set_covers_the_project_and_is_consistent():
    """Every requirement of the extras the images install is pinned within its range, and every pinned
    package's own requirements are met by the other pins (what a resolver checks)."""
    pins = _pins()
    project = distribution("plmrec")
    wanted = [Requirement(r) for r in project.requires or []]
    for req in wanted:
        extra_ok = req.marker is None or any(
            req.marker.evaluate({"extra": e}) for e in ("text", "recsys", "serve", "cluster", "tracking-server", "test")
        )
        if not extra_ok:
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {name}=={pins[name]} outside {req}"
    problems = []
    for name, version in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            problems.append(f"{name} is pinned but not installed")
            continue
        if Version(dist.version.split("+")[0]) != version:
            problems.append(f"{name}: installed {dist.version}, pinned {version}")
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep in pins and not req.specifier.contains(pins[dep], prereleases=True):
                problems.append(f"{name}=={version} needs {req}, pinned {dep}=={pins[dep]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_step_images_let_the_kfp_launcher_stage_artifacts_as_the_non_root_user(name):
    """The KFP launcher writes artifacts under /gcs, /minio and /s3; as a non-root step it needs them
    to exist and be its own (kubeflow/pipelines#5673)."""
    text = " ".join(_instructions(ROOT / "docker" / name))
    user = re.findall(r"USER (\S+)", text)[-1]
    assert re.search(rf"mkdir -p /gcs /minio /s3 && chown {user} /gcs /minio /s3", text), name


def test_a_non_editable_install_ships_every_package():
    """The images install with `pip install .`, which ships only the packages pyproject.toml lists:
    every package directory of plmrec must be there (plmrec.cluster once was not)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"plmrec", "plmrec.components", "plmrec.pipelines"}
    on_disk |= {
        "plmrec." + ".".join(p.parent.relative_to(ROOT / "src" / "plmrec").parts)
        for p in (ROOT / "src" / "plmrec").glob("*/**/__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk
    assert all((ROOT / setuptools["package-dir"][name] / "__init__.py").exists() for name in setuptools["package-dir"])
