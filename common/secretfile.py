"""Reading a secret (a broker password) from a file named on the command line or in settings.

Who calls it: ``lifelong gm`` (``cloud/commands.py``) and ``lifelong tail`` (``cli/tail.py``) for
``--password-file``, and the LC's settings (``edge/config.py``) for ``password_file``. The secret
is the file's text without surrounding white space. A file that cannot be read is a
:class:`~lifelong.common.errors.ConfigError` (exit status 2) naming the option, the path and the
reason, never any of the content.
"""

from __future__ import annotations

import os
from pathlib import Path

from lifelong.common.errors import ConfigError


def read_secret_file(path: str | os.PathLike[str], option: str = "--password-file") -> str:
    """The secret held in ``path``; ``option`` is the flag that named the file, for the error."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read {option} {os.fspath(path)}: {reason}") from None
