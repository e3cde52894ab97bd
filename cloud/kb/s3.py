"""The knowledge base's files in an S3-compatible bucket: ``S3Files``, a ``FileStore``.

Who calls it: ``lifelong.cloud.kb.files.open_files`` when ``lifelong kb serve --files`` (or
``lifelong gm --kb-files``) is an ``s3://BUCKET/PREFIX`` URL; nothing imports it otherwise, so
``boto3`` (the ``s3`` extra) is needed only then.

The semantics are ``LocalFiles``' (``lifelong.cloud.kb.files``): a file's path is checked with
``check_path`` before any request and becomes the key ``PREFIX/path``; a file over ``max_bytes``
is refused with ``TooLarge`` before a byte is sent (a stream of unknown length is spooled to a
temporary file first, refused as soon as it passes the bound); a PUT, or a multipart upload that
only its completion makes visible, replaces an object whole, so a reader sees the old object or
the new one, never part of one; a missing object is ``FileMissing``; reads stream.

One difference: S3 has no directories, so ``a`` and ``a/b`` may both be files here, where a
directory refuses that.

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws/credentials``, a role), never from the command line; an endpoint URL
holding a user or password is refused. Nothing here logs or repeats a credential: errors name the
bucket, the key and S3's error code only, and boto3's own loggers are held at INFO even under
``--log-level DEBUG``, since their DEBUG lines print signed request headers
(docs/knowledge-base.md, "Storage").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from lifelong.cloud.kb.files import CHUNK, BadPath, FileMissing, FilesUnavailable, TooLarge, check_path
from lifelong.common.errors import ConfigError

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 64 * 1024 * 1024
"""Files of at least this size go up as a multipart upload (parts of this size)."""
SPOOL_IN_MEMORY = 1024 * 1024
"""A stream of unknown length is held in memory up to this size, then spooled to disk."""
_MISSING = ("404", "NoSuchKey", "NotFound")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://BUCKET/PREFIX`` (the prefix may be empty; its parts are
    plain names as a file path's); ``ConfigError`` naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"--files: {url!r} is not s3://BUCKET/PREFIX")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError("--files: an s3:// URL is s3://BUCKET/PREFIX, with no user, query or fragment")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket):
        raise ConfigError(f"--files: {bucket!r} is not a bucket name (3 to 63 letters, digits, '.', '-')")
    if prefix:
        try:
            check_path(prefix)
        except BadPath as exc:
            raise ConfigError(f"--files: the prefix of {url!r}: {exc}") from None
    return bucket, prefix


def _check_endpoint(endpoint: str | None) -> None:
    if endpoint is None:
        return
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--s3-endpoint: {endpoint!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "--s3-endpoint: put no credentials in the URL; give them in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
        )


def _code(exc: Exception) -> str:
    """S3's error code (or HTTP status) of a botocore ``ClientError``, else the exception's type."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code:
            return str(code)
    return type(exc).__name__


class _Body(io.RawIOBase):
    """An S3 object's body (botocore's ``StreamingBody``) as a readable binary file."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()


class S3Files:
    """A ``FileStore`` in ``bucket`` under ``prefix``, on AWS S3 or the S3-compatible server at
    ``endpoint``. Checks at once that the bucket can be reached (``ConfigError`` otherwise)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        check: bool = True,
    ) -> None:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
            from boto3.s3.transfer import TransferConfig
        except ImportError:
            raise ConfigError("an s3:// file store needs boto3: pip install 'lifelong[s3]'") from None
        _check_endpoint(endpoint)
        for name in ("boto3", "botocore", "s3transfer"):  # their DEBUG lines carry credentials
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        config = botocore.config.Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # An S3-compatible server is reached by path (http://host/bucket/key); AWS itself
            # picks the style.
            s3={"addressing_style": "path" if endpoint else "auto"},
            # Checksums only where S3 requires them: S3-compatible servers differ in the
            # newer ones botocore would add to every PUT.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region or session.region_name or "us-east-1",
            config=config,
        )
        self._errors: tuple[type[Exception], ...] = (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_threshold,
            use_threads=False,
        )
        if check:
            self.check()

    def __repr__(self) -> str:
        return f"S3Files(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint or 'AWS'})"

    def _where(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def check(self) -> None:
        """``ConfigError`` unless the bucket is there and these credentials may use it."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            raise ConfigError(f"the file store {self._where()} cannot be used: {_code(exc)}") from None

    def _key(self, path: str) -> str:
        path = check_path(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _unavailable(self, action: str, path: str, exc: Exception) -> FilesUnavailable:
        log.warning("file store %s: %s %s failed: %s", self._where(), action, path, _code(exc))
        return FilesUnavailable(f"the file store could not {action} {path}: {_code(exc)}")

    def put(self, path: str, data: BinaryIO | bytes, max_bytes: int) -> int:
        key = self._key(path)
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            if len(body) > max_bytes:
                raise TooLarge(f"the file {path} is over {max_bytes} bytes")
            return self._upload(path, key, io.BytesIO(body), len(body))
        size = _seekable_size(data)
        if size is not None:
            if size > max_bytes:
                raise TooLarge(f"the file {path} is over {max_bytes} bytes")
            return self._upload(path, key, data, size)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            written = 0
            while chunk := data.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise TooLarge(f"the file {path} is over {max_bytes} bytes")
                spool.write(chunk)
            spool.seek(0)
            return self._upload(path, key, spool, written)  # type: ignore[arg-type]

    def _upload(self, path: str, key: str, stream: BinaryIO, size: int) -> int:
        try:
            if size < self._transfer.multipart_threshold:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=stream, ContentLength=size)
            else:  # visible only when complete; aborted on failure
                self._client.upload_fileobj(stream, self.bucket, key, Config=self._transfer)
        except self._errors as exc:
            raise self._unavailable("store", path, exc) from None
        return size

    def open(self, path: str) -> BinaryIO:
        return self.open_sized(path)[0]

    def _object(self, action: str, path: str, call: Any) -> Any:
        """``call(Bucket=, Key=)`` for ``path``'s object: ``FileMissing`` if there is none."""
        try:
            return call(Bucket=self.bucket, Key=self._key(path))
        except self._errors as exc:
            if _code(exc) in _MISSING:
                raise FileMissing(f"no file {path}") from None
            raise self._unavailable(action, path, exc) from None

    def open_sized(self, path: str) -> tuple[BinaryIO, int]:
        got = self._object("read", path, self._client.get_object)
        reader = io.BufferedReader(_Body(got["Body"]), buffer_size=CHUNK)
        return reader, int(got["ContentLength"])

    def size(self, path: str) -> int:
        return int(self._object("look up", path, self._client.head_object)["ContentLength"])

    def exists(self, path: str) -> bool:
        try:
            self.size(path)
        except FileMissing:
            return False
        return True

    def delete(self, path: str) -> bool:
        if not self.exists(path):
            return False
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(path))
        except self._errors as exc:
            raise self._unavailable("delete", path, exc) from None
        return True


def _seekable_size(data: BinaryIO) -> int | None:
    """The bytes left in ``data`` if it can tell (a file, a spooled part), else None."""
    try:
        if not data.seekable():
            return None
        here = data.tell()
        end = data.seek(0, os.SEEK_END)
        data.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end - here


def open_s3(url: str, endpoint: str | None = None) -> S3Files:
    """The ``S3Files`` of ``s3://BUCKET/PREFIX`` (``--files``) at ``endpoint`` (``--s3-endpoint``;
    None: AWS, or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set)."""
    bucket, prefix = parse_s3_url(url)
    return S3Files(bucket, prefix, endpoint=endpoint)
