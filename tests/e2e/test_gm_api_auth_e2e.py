"""The GM's API with tokens over HTTPS, end to end: a real ``lifelong gm`` with ``--token-file``,
``--api-tls-cert`` and ``--api-tls-key``, driven by the real ``lifelong`` client reading its
kubeconfig-like config file (docs/operations.md, "The client's config file, its token and
HTTPS"; docs/security.md, "HTTP APIs").

A read token lists but cannot change anything (403, one line, exit 1); the write token applies
and deletes; ``LIFELONG_TOKEN`` overrides the file's token; no token at all is 401; a client that
does not trust the GM's certificate sends nothing. No token ever shows in the client's output.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.brokers import Broker
from harness.processes import GMProcess
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

READ_TOKEN = "read-token-5f1c0a9e7d3b"
WRITE_TOKEN = "write-token-c84e29b1a670"
DATASET = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "ds1"},
    "spec": {"url": "/data/ds1.txt", "format": "txt", "nodeName": "edge-1"},
}


def certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "api.crt", folder / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class HTTPSGM(GMProcess):
    def __init__(self, workdir: Path, broker: Broker, cert: Path, key: Path, tokens: Path) -> None:
        extra = ["--token-file", str(tokens), "--api-tls-cert", str(cert), "--api-tls-key", str(key)]
        super().__init__(workdir, broker_url=broker.url, prefix=broker.prefix, extra=extra)
        self.context = ssl.create_default_context(cafile=str(cert))

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def healthy(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"{self.server}/healthz", timeout=5, context=self.context) as r:
                return bool(r.read() == b"ok\n")
        except OSError:
            return False


@pytest.fixture
def setup(tmp_path: Path, broker: Broker) -> Iterator[tuple[HTTPSGM, Path, Path]]:
    cert, key = certificate(tmp_path)
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"# token,role,name\n{WRITE_TOKEN},write,ops\n{READ_TOKEN},read,viewer\n")
    tokens.chmod(0o600)
    gm = HTTPSGM(tmp_path, broker, cert, key, tokens)
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"name": "lab", "cluster": {"server": gm.server, "certificate-authority": str(cert)}}
                ],
                "users": [{"name": "viewer", "user": {"token": READ_TOKEN}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "viewer"}}],
                "current-context": "lab",
            }
        )
    )
    try:
        gm.start()
        gm.wait_ready()
        yield gm, config, tmp_path
    finally:
        if gm.alive():
            gm.kill()


def client(
    config: Path, *args: str, stdin: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LIFELONG_TOKEN", "LIFELONG_CONFIG")}
    if token is not None:
        env["LIFELONG_TOKEN"] = token
    out = subprocess.run(
        [sys.executable, "-m", "lifelong", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert READ_TOKEN not in out.stdout + out.stderr and WRITE_TOKEN not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_tokens_and_roles_over_https_with_the_real_gm_and_client(setup: tuple[HTTPSGM, Path, Path]) -> None:
    gm, config, tmp = setup
    dataset = json.dumps(DATASET)

    # the config's read token: listing works, changing is refused with one line
    listed = client(config, "get", "ds")
    assert listed.returncode == 0, listed.stderr
    refused = client(config, "apply", "-f", "-", stdin=dataset)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "403" in refused.stderr

    # LIFELONG_TOKEN overrides the file's token: the write token applies and deletes
    applied = client(config, "apply", "-f", "-", stdin=dataset, token=WRITE_TOKEN)
    assert applied.returncode == 0 and "dataset.sedna.io/ds1 created" in applied.stdout, applied.stderr
    shown = client(config, "get", "ds", "ds1", "-o", "jsonpath={.spec.nodeName}")
    assert (shown.returncode, shown.stdout) == (0, "edge-1"), shown.stderr
    assert client(config, "delete", "ds", "ds1").returncode == 1  # read token again
    deleted = client(config, "delete", "ds", "ds1", token=WRITE_TOKEN)
    assert deleted.returncode == 0, deleted.stderr

    # an unknown token is 401, with a line that says what to do
    unknown = client(config, "get", "ds", token="not-a-token")
    assert unknown.returncode == 1 and "401" in unknown.stderr, unknown.stderr

    # a client that does not trust the GM's certificate sends nothing
    untrusting = tmp / "untrusting"
    doc = yaml.safe_load(config.read_text())
    del doc["clusters"][0]["cluster"]["certificate-authority"]
    untrusting.write_text(yaml.safe_dump(doc))
    distrust = client(untrusting, "get", "ds")
    assert distrust.returncode == 1 and "certificate" in distrust.stderr.lower(), distrust.stderr
    wait_for(gm.healthy, what="the GM still serving after the refusals")
