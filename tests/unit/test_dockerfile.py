"""The Dockerfile of the GM/LC image, read without a Docker engine (none runs on the test
machines, so the image build itself is never exercised here; docs/operations.md says so).

Checked: the base image is pinned by an exact version tag and a digest; the image runs as a
non-root numeric user, the one the manifests in deploy/k8s run it as; it installs this
repository's package with the same extras as the manifests need (``kubernetes``, for
``--store kubernetes``), extras the test install (Makefile) includes too; its tag matches
deploy/k8s and the package version; ``lifelong`` is on the image's PATH, where the manifests'
``command: ["lifelong"]`` finds it; .dockerignore keeps the venv and .git out. The install step
itself runs in tests/integration/test_image_install.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from harness.deploy import ROOT, copy_build_context, dockerfile_instructions

K8S = ROOT / "deploy" / "k8s"


def instructions(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def gm_deployment() -> dict[str, Any]:
    docs = yaml.safe_load_all((K8S / "gm-deployment.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "Deployment")


def test_base_image_is_pinned_by_version_and_digest() -> None:
    (base,) = instructions("FROM")
    found = re.fullmatch(r"(?P<name>[\w./-]+):(?P<tag>[\w.-]+)@sha256:(?P<digest>[0-9a-f]{64})", base)
    assert found, f"FROM {base}: pin an exact tag and its digest (name:TAG@sha256:...)"
    assert re.match(r"\d+\.\d+\.\d+-", found["tag"]), f"{found['tag']} is not an exact version tag"
    assert found["tag"].startswith("3.11."), "the image's Python must be the project's (3.11)"


def test_image_runs_as_the_manifests_non_root_user() -> None:
    users = instructions("USER")
    assert users, "the image must set USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: a numeric non-root user"
    context = gm_deployment()["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert int(user) == context["runAsUser"] and int(group) == context["runAsGroup"]
    runs = " ".join(instructions("RUN"))
    assert f"--uid {user}" in runs and f"--gid {group}" in runs, "the user must exist in the image"


def test_image_installs_this_repository_with_the_extras_the_manifests_need() -> None:
    copies = instructions("COPY")
    assert copies == [". /src"], copies
    installs = [m for run in instructions("RUN") for m in re.findall(r"pip install (?:--\S+ )*(\S+)", run)]
    assert installs == ['"/src[kubernetes]"'], installs
    extras = set(installs[0].strip('"').removeprefix("/src[").removesuffix("]").split(","))
    # The GM Deployment runs the Kubernetes store, which needs the `kubernetes` extra.
    gm = gm_deployment()["spec"]["template"]["spec"]["containers"][0]
    needed = {"kubernetes"} if "kubernetes" in gm["args"][gm["args"].index("--store") + 1] else set()
    assert extras == needed
    optional = pyproject()["project"]["optional-dependencies"]
    assert extras <= set(optional)
    # The same extras the test install takes (Makefile: pip install -e '.[...]').
    tested = re.search(r"pip install --quiet -e '\.\[([\w,]+)\]'", (ROOT / "Makefile").read_text())
    assert tested and extras <= set(tested.group(1).split(","))
    # `command: ["lifelong"]` in the manifests resolves through the image's PATH.
    assert gm["command"] == ["lifelong"]
    env = " ".join(instructions("ENV"))
    assert re.search(r"PATH=/opt/lifelong/bin:\$PATH", env), env
    assert "python -m venv /opt/lifelong" in " ".join(instructions("RUN"))


def test_image_tag_matches_the_manifests_and_the_package_version() -> None:
    version = pyproject()["project"]["version"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "lifelong", "newTag": version}]
    assert gm_deployment()["spec"]["template"]["spec"]["containers"][0]["image"] == "lifelong"
    build = f"docker build -t lifelong:{version} ."
    assert build in (ROOT / "Dockerfile").read_text()
    assert build in (ROOT / "docs" / "operations.md").read_text()


def test_build_context_leaves_out_the_venv_and_git_but_keeps_the_package(tmp_path: Path) -> None:
    context = copy_build_context(tmp_path / "context")
    assert not (context / ".venv").exists() and not (context / ".git").exists()
    for needed in ("pyproject.toml", "setup.py", "README.md", "cli/__main__.py", "common", "cloud", "edge"):
        assert (context / needed).exists(), f"{needed} must reach the build context"
    assert not list(context.rglob("__pycache__"))
