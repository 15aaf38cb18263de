"""Downloading a dataset file: checked against its published digest, written atomically."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm


def fetch(url: str, path: Path, algorithm: str, expected: str, progress: bool = False) -> None:
    """Download ``url`` to ``path`` if its ``algorithm`` digest (``"md5"``, ``"sha256"``) is ``expected``.

    The file is written to a temporary name beside ``path`` and renamed into place only once the digest
    matches, so an interrupted or corrupt download never leaves a file that looks complete.

    Raises:
        ValueError: the downloaded bytes have another digest.
        ConnectionError: the URL cannot be reached; the message says where to put the file by hand.
    """
    root, name = path.parent, path.name
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
    try:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        with os.fdopen(fd, "wb") as file, urllib.request.urlopen(url, timeout=60) as response, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, desc=name, unit="B",
                     unit_scale=True, disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                file.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != expected:
            raise ValueError(f"downloaded {url} has {algorithm} {digest.hexdigest()}, expected {expected}; the "
                             f"download is corrupt or the release changed. Try again, or put {name} in {root} by hand")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file is plain public data
        os.replace(tmp, path)
    except urllib.error.URLError as error:
        Path(tmp).unlink(missing_ok=True)
        raise ConnectionError(f"cannot download {url} ({error.reason}); put {name} in {root} by hand") from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
