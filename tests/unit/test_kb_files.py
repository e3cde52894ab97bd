"""Choosing where the knowledge base keeps its files: ``open_files`` (``--files``), the s3:// URL
it reads, ``LocalFiles.open_sized``, and the GM's ``--kb-files``. The S3 store itself is tested
against a real S3 server in ``tests/integration/test_kb_s3.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lifelong.cloud.commands import _knowledge_base
from lifelong.cloud.commands import register as register_gm
from lifelong.cloud.kb.files import LocalFiles, open_files
from lifelong.cloud.kb.s3 import parse_s3_url
from lifelong.common.errors import ConfigError


def test_an_s3_url_names_a_bucket_and_a_checked_prefix() -> None:
    assert parse_s3_url("s3://my-bucket/kb/files/") == ("my-bucket", "kb/files")
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    for bad in (
        "s3://",
        "http://bucket/x",
        "s3://b/x",
        "s3://bucket/../x",
        "s3://user:pw@bucket/x",
        "s3://bucket/x?a=1",
        "s3://bucket_underscore/x",
    ):
        with pytest.raises(ConfigError, match="--files"):
            parse_s3_url(bad)


def test_open_files_is_a_directory_unless_an_s3_url(tmp_path: Path) -> None:
    files = open_files(tmp_path / "f")
    assert isinstance(files, LocalFiles)
    assert files.root == (tmp_path / "f").resolve()
    with pytest.raises(ConfigError, match="--s3-endpoint goes with --files s3://"):
        open_files(tmp_path / "f", "http://127.0.0.1:1")


def test_a_local_file_opened_with_its_size_keeps_that_version(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path)
    files.put("m.pkl", b"old", 100)
    handle, size = files.open_sized("m.pkl")
    files.put("m.pkl", b"the new, longer file", 100)  # replaced while it is being read
    with handle:
        assert (handle.read(), size) == (b"old", 3)


def _gm_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_gm(parser.add_subparsers())
    return parser.parse_args(["gm", *argv])


def test_the_gm_keeps_its_kbs_files_where_kb_files_says(tmp_path: Path) -> None:
    args = _gm_args(
        "--kb-dir", str(tmp_path / "kb"), "--kb-files", str(tmp_path / "elsewhere"), "--kb-port", "0"
    )
    kb, server, _ = _knowledge_base(args)
    server.start()  # as the GM does; its server threads end only after a start (KBServer.stop)
    try:
        kb.put_file("m.pkl", b"model")
        assert (tmp_path / "elsewhere" / "m.pkl").read_bytes() == b"model"
        assert not (tmp_path / "kb" / "files").exists()
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="--kb-files and --kb-s3-endpoint go with --kb-dir"):
        _knowledge_base(_gm_args("--kb-files", str(tmp_path / "elsewhere")))
