"""Images from an https:// URL: downloaded once into a cache, checked against --sha256, reused after.

The cache is $PIML_CACHE_DIR, else $XDG_CACHE_HOME/piml/images, else ~/.cache/piml/images. A
download goes to NAME.part and is renamed only once its sha256 matches, so an interrupted or
corrupt download is never used; re-running resumes nothing and starts over.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CHUNK = 1 << 20


def cache_dir() -> Path:
    if os.environ.get("PIML_CACHE_DIR"):
        return Path(os.environ["PIML_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "piml" / "images"


def _normal_sha(sha: str | None, where: str) -> str:
    if not sha:
        raise InputError(
            Problem(
                where,
                "a URL needs --sha256 so the download can be checked",
                "add --sha256 HEX (the image's published SHA-256)",
            )
        )
    sha = sha.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise InputError(
            Problem("--sha256", f"'{sha}' is not a SHA-256 (64 hex digits)", "copy the checksum from the download page")
        )
    return sha


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK * 4)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def check_file_sha256(path: Path, sha: str, where: str) -> None:
    want = _normal_sha(sha, where)
    if not path.is_file():
        raise InputError(Problem(where, "no such file", "check the path"))
    got = file_sha256(path)
    if got != want:
        raise InputError(
            Problem(where, f"has sha256 {got[:16]}…, not {want[:16]}…", "download it again, or check --sha256")
        )


def fetch(url: str, sha: str | None, say: Callable[[str], None] = print, timeout: float = 30.0) -> Path:
    """The cached file for `url`, downloading it when missing. Raises InputError/PimlError."""
    want = _normal_sha(sha, url)
    parsed = urlparse(url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and parsed.hostname in LOOPBACK):
        raise InputError(Problem(url, "only https:// URLs are downloaded", "use the https:// address of the image"))
    name = Path(unquote(parsed.path)).name or "image"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    directory = cache_dir()
    path = directory / f"{want[:16]}-{name}"
    if path.is_file():
        say(f"using the cached download {path}")
        return path
    directory.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    import urllib.error
    import urllib.request

    h = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "piml"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            progress = _progress(name, total)
            done = 0
            try:
                while chunk := response.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    progress(done)
            finally:
                progress(None)
            if total and done != total:
                raise PimlError(
                    Problem(url, f"the download stopped after {done} of {total} bytes", "run the same command again"),
                    EXIT_FAILED,
                )
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise PimlError(
            Problem(url, f"the server answered {exc.code} {exc.reason}", "check the URL"), EXIT_FAILED
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise PimlError(
            Problem(url, f"download failed: {reason}", "check the network and run the same command again"), EXIT_FAILED
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    got = h.hexdigest()
    if got != want:
        part.unlink(missing_ok=True)
        raise PimlError(
            Problem(
                url,
                f"the download has sha256 {got[:16]}…, not {want[:16]}… (corrupt download or wrong --sha256)",
                "check --sha256 against the download page and run again",
            ),
            EXIT_FAILED,
        )
    os.replace(part, path)
    say(f"downloaded and checked {path}")
    return path


def _progress(label: str, total: int):
    """update(done); update(None) ends the bar."""
    from piml.output import ByteProgress

    bar = ByteProgress(f"downloading {label}", total or None)
    return lambda done: bar.close() if done is None else bar(done)
