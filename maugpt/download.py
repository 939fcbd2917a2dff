"""Resumable, verified downloads of the public releases, unpacked into the layouts ``maugpt build`` reads.

A source's :class:`Release` (in its file of :mod:`maugpt.mauset.sources`) lists its files: where
each is published, its SHA-256 and where that hash comes from, and the licence. For
``maugpt download SOURCE --root DIR``:

* the licence is printed and must be accepted once (``--accept_licence``; several releases are
  non-commercial); the acceptance is recorded in ``DIR/.downloads/licences.json``;
* each file is fetched into ``DIR/.downloads/<source>/`` as ``<name>.part``, resumed with an HTTP
  range request after a cut connection (a few tries, then the part stays for the next run),
  shown by a progress bar, and verified: a file whose SHA-256 differs is removed and named,
  never unpacked. A release whose publisher gives no hash is hashed on its first download; the
  hash is printed and recorded (``DIR/.downloads/hashes.json``) and later downloads must match it;
* a file with no direct link (a form, a login) is not fetched: its page, the file name and the
  folder to save it in are printed, and a file saved there is verified like a downloaded one;
* the verified files are unpacked into ``DIR/<source>/`` (members that would land outside it are
  refused), and ``DIR/<source>/.download.json`` records what was unpacked: a second run that
  finds it with the same hashes downloads nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx2
from tqdm import tqdm

#: Where a hash comes from when the publisher and anomalib's registry give none.
COMPUTED = "computed on first download"
CHUNK = 1 << 20


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release.

    Args:
        name: the file's name as saved (``mvtec_anomaly_detection.tar.xz``).
        url: its direct link; None when the publisher offers it only behind a form or a login.
        sha256: its SHA-256; None where nobody publishes one (then :data:`COMPUTED`).
        sha256_from: where the hash comes from: the publisher's page, anomalib's registry (with
            the file there), or :data:`COMPUTED`.
        strip_top: when every member of the archive is under one top folder, drop that folder (a
            GitHub archive's ``<repo>-<commit>/``), so that the tree lands as the scanner reads it.
        skip: glob patterns of members to leave out (stray copies a release ships).
    """

    name: str
    url: str | None
    sha256: str | None
    sha256_from: str
    strip_top: bool = False
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class Release:
    """Where a source is published, its files and its licence.

    Args:
        page: the release's own page (shown with the licence, and for files without a direct link).
        licence: the licence's name and where the publisher states it.
        files: the files to fetch and unpack, in order.
    """

    page: str
    licence: str
    files: tuple[ReleaseFile, ...]


class DownloadError(RuntimeError):
    """A download that cannot go on: the message names the file and what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str,
    part: Path,
    *,
    client: httpx2.Client,
    tries: int = 5,
    backoff: float = 1.0,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> None:
    """Download ``url`` into ``part``, resuming from ``part``'s size with an HTTP range request:
    after a cut connection it tries again (``tries`` in all, waiting ``backoff`` × 2^k seconds)
    from where it stopped. A server that ignores the range restarts the file. ``progress(done,
    total)`` follows the bytes. An HTTP error status fails at once; the part is kept either way."""
    for attempt in range(tries):
        done = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and done:  # the part is already whole
                    return
                if response.status_code >= 400:
                    raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
                resumed = response.status_code == 206
                length = response.headers.get("Content-Length")
                total = (done if resumed else 0) + int(length) if length is not None else None
                with part.open("ab" if resumed else "wb") as f:
                    done = done if resumed else 0
                    progress(done, total)
                    for block in response.iter_bytes():  # as received: a cut keeps every byte
                        f.write(block)
                        done += len(block)
                        progress(done, total)
                if total is not None and done < total:
                    raise httpx2.ReadError(f"the connection closed after {done} of {total} bytes")
                return
        except httpx2.TransportError as err:
            if attempt + 1 == tries:
                raise DownloadError(
                    f"{url}: {type(err).__name__}: {err} after {tries} tries; {part} keeps the "
                    f"{part.stat().st_size if part.exists() else 0} bytes received, and the next run resumes it"
                ) from None
            time.sleep(backoff * 2**attempt)


def members(archive: Path) -> list[str]:
    """The member names of a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return [info.filename for info in zf.infolist()]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            return tf.getnames()
    raise DownloadError(f"{archive} is neither a zip nor a tar archive; not unpacked")


def unpack(archive: Path, dest: Path, *, strip_top: bool = False, skip: tuple[str, ...] = ()) -> int:
    """Unpack a zip or tar archive into ``dest``; returns the files written. ``strip_top`` and
    ``skip`` as in :class:`ReleaseFile`. A member that would land outside ``dest`` (an absolute
    path, ``..``, a link) is refused, naming it, before anything is written."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    names = members(archive)
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    drop = 1 if strip_top and len(tops) == 1 and any(len(PurePosixPath(n).parts) > 1 for n in names) else 0

    def target(name: str) -> Path | None:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not (dest / path).resolve().is_relative_to(root):
            raise DownloadError(f"{archive}: member {name!r} would be written outside {dest}; not unpacked")
        if any(fnmatch.fnmatch(name, pattern) for pattern in skip) or len(path.parts) <= drop:
            return None
        return dest.joinpath(*path.parts[drop:])

    for name in names:  # every member checked before the first is written
        target(name)
    written = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                out = target(info.filename)
                if out is None or info.is_dir():
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                written += 1
        return written
    with tarfile.open(archive) as tf:
        for member in tf:
            out = target(member.name)
            if out is None or member.isdir():
                continue
            if not member.isfile():
                raise DownloadError(f"{archive}: member {member.name!r} is a link or device; not unpacked")
            out.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            written += 1
    return written


class Downloads:
    """The state of one ``--root``: recorded licences and hashes, the fetched files, and the
    unpacked sources (see the module docstring)."""

    def __init__(self, root: Path, *, client: httpx2.Client | None = None, say: Callable[[str], None] = print):
        self.root = Path(root)
        self.cache = self.root / ".downloads"
        self.client = client or httpx2.Client(follow_redirects=True, timeout=httpx2.Timeout(60.0, connect=30.0))
        self.say = say

    def _read(self, name: str) -> dict:
        path = self.cache / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write(self, name: str, data: dict) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.cache / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.cache / name)

    def accept(self, name: str, release: Release, accept_licence: bool) -> None:
        """Print the licence; fail unless it was accepted now or before."""
        accepted = self._read("licences.json")
        self.say(f"{name}: {release.licence} ({release.page})")
        if accepted.get(name) == release.licence:
            return
        if not accept_licence:
            raise DownloadError(
                f"{name}: its licence ({release.licence}) has not been accepted: read it on {release.page}, "
                "then run again with --accept_licence"
            )
        self._write("licences.json", {**accepted, name: release.licence})

    def expected(self, name: str, file: ReleaseFile) -> str | None:
        """The hash ``file`` must have: published, or recorded at its first download (else None)."""
        return file.sha256 or self._read("hashes.json").get(f"{name}/{file.name}")

    def verify(self, name: str, file: ReleaseFile, path: Path) -> str:
        """``path``'s SHA-256, checked against :meth:`expected`; a mismatch removes it. The first
        file of a release without a published hash records its own (printed)."""
        digest = sha256_of(path)
        want = self.expected(name, file)
        if want is None:
            hashes = self._read("hashes.json")
            self._write("hashes.json", {**hashes, f"{name}/{file.name}": digest})
            self.say(f"{name}: {file.name} sha256 {digest} ({COMPUTED}, recorded in {self.cache / 'hashes.json'})")
            return digest
        if digest != want:
            path.unlink()
            raise DownloadError(
                f"{name}: {file.name} has sha256 {digest}, expected {want} ({file.sha256_from}); "
                "the file was removed: download it again"
            )
        self.say(f"{name}: {file.name} sha256 {digest} verified ({file.sha256_from})")
        return digest

    def obtain(self, name: str, file: ReleaseFile, release: Release) -> Path:
        """The verified file, downloaded (or resumed) unless a verified copy is there; a file
        without a direct link must have been saved by the user."""
        folder = self.cache / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / file.name
        if path.is_file():
            self.verify(name, file, path)
            return path
        if file.url is None:
            raise DownloadError(
                f"{name}: {file.name} has no direct link: download it from {release.page} (a form or a "
                f"login), save it as {path}, and run this command again; it is verified there"
            )
        part = folder / f"{file.name}.part"
        with tqdm(desc=file.name, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:

            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                fetch(file.url, part, client=self.client, progress=progress)
            except DownloadError:
                if part.exists() and part.stat().st_size == 0:
                    part.unlink()
                raise
        os.replace(part, path)
        self.verify(name, file, path)
        return path

    def done(self, name: str, release: Release, dest: Path) -> bool:
        """Whether ``dest`` holds ``release`` unpacked from files of the hashes expected now."""
        marker = dest / ".download.json"
        want = {f.name: self.expected(name, f) for f in release.files}
        if marker.is_file() and None not in want.values() and json.loads(marker.read_text()).get("files") == want:
            self.say(f"{name}: already downloaded, verified and unpacked in {dest}")
            return True
        return False

    def mark_done(self, name: str, release: Release, dest: Path) -> None:
        """Record what ``dest`` was unpacked from (see :meth:`done`)."""
        hashes = {f.name: self.expected(name, f) for f in release.files}
        (dest / ".download.json").write_text(json.dumps({"files": hashes, "page": release.page}, indent=2))

    def install(self, name: str, release: Release, *, accept_licence: bool = False) -> Path:
        """Download, verify and unpack ``release`` into ``root/name``; nothing to do when it is
        unpacked there with the same hashes. Returns the source's folder."""
        self.accept(name, release, accept_licence)
        dest = self.root / name
        if self.done(name, release, dest):
            return dest
        files = [(file, self.obtain(name, file, release)) for file in release.files]  # all verified first
        written = sum(unpack(path, dest, strip_top=file.strip_top, skip=file.skip) for file, path in files)
        self.mark_done(name, release, dest)
        self.say(f"{name}: {written} files unpacked into {dest}")
        return dest


@dataclass(frozen=True)
class HubRelease:
    """A dataset published on the Hugging Face Hub: its files (``ReleaseFile.name`` is the path in
    the repository; ``url`` is unused), fetched with ``huggingface_hub`` into its cache (resumed,
    and offline with ``HF_HUB_OFFLINE=1`` once cached), verified, then copied or unpacked into
    ``root/<folder>``."""

    repo_id: str
    revision: str
    folder: str
    page: str
    licence: str
    files: tuple[ReleaseFile, ...]

    @property
    def release(self) -> Release:
        return Release(page=self.page, licence=self.licence, files=self.files)


def install_hub(downloads: Downloads, name: str, hub: HubRelease, *, accept_licence: bool = False) -> Path:
    """``hub``'s files verified in ``downloads.root / hub.folder``: a zip ``X.zip`` unpacked into
    ``X/`` there (unless its members already are under ``X/``), other files copied; nothing to do
    when a previous run left them with the same hashes. A file's hash is the one recorded here
    (:class:`ReleaseFile`), else the Hub's own for a large file (its cache names the file by its
    SHA-256), else computed on the first download."""
    from huggingface_hub import hf_hub_download

    downloads.accept(name, hub.release, accept_licence)
    dest = downloads.root / hub.folder
    if downloads.done(name, hub.release, dest):
        return dest
    fetched = []
    for file in hub.files:
        try:
            path = Path(hf_hub_download(hub.repo_id, file.name, repo_type="dataset", revision=hub.revision))
        except Exception as err:  # the hub's errors: offline without a cached copy, HTTP, a missing file
            raise DownloadError(
                f"{name}: {hub.repo_id}/{file.name} @ {hub.revision}: {type(err).__name__}: {err}"
            ) from None
        path = path.resolve()  # the cache's blob (a wrong one is removed, and fetched again next time)
        if file.sha256 is None and len(path.name) == 64:  # a large (LFS) file's blob is named by its SHA-256
            file = ReleaseFile(file.name, None, path.name, "the Hub's record of the file (its LFS object id)")
        downloads.verify(name, file, path)
        fetched.append((file, path))
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    for file, path in fetched:
        if zipfile.is_zipfile(path):
            stem = PurePosixPath(file.name).stem
            own_top = {PurePosixPath(n).parts[0] for n in members(path)} == {stem}
            written += unpack(path, dest if own_top else dest / stem, skip=file.skip)
        else:
            shutil.copyfile(path, dest / PurePosixPath(file.name).name)
            written += 1
    downloads.mark_done(name, hub.release, dest)
    downloads.say(f"{name}: {written} files in {dest}")
    return dest


#: MMAD (Jiang et al. 2025): the questions and the five image sets, as its query scripts read them.
MMAD = HubRelease(
    repo_id="jiang-cc/MMAD",
    revision="main",
    folder="MMAD",
    page="https://huggingface.co/datasets/jiang-cc/MMAD",
    licence="CC BY-NC-SA 4.0 (the dataset card), and each image source's own licence: research use only",
    files=(
        ReleaseFile(
            "mmad.json",
            None,
            "7452a5dc452325735ad68f19cdaf25369e0127e32cd21f6d53be195e8242720a",
            "the Hub's file page (LFS object id)",
        ),
        ReleaseFile(
            "MVTec-AD.zip",
            None,
            "0a4ff072fafcfc4bccce68c0657b5d3890cb3c01737c66ab36259f806438faf2",
            "the Hub's file page (LFS object id)",
        ),
        ReleaseFile(
            "DS-MVTec.zip",
            None,
            "1b0ff7b548021e977a755b02167c069dc03e701718d4436e635071f7e1f899f3",
            "the Hub's file page (LFS object id)",
        ),
        ReleaseFile(
            "MVTec-LOCO.zip",
            None,
            "e2bbcb234fcb7478199dde32a861642eadade7c10ea762958bc7d762f3cd82e9",
            "the Hub's file page (LFS object id)",
        ),
        ReleaseFile("VisA.zip", None, None, COMPUTED),
        ReleaseFile("GoodsAD.zip", None, None, COMPUTED),
    ),
)

#: LLaVA-Pretrain (Liu et al. 2023): the 558K BLIP captions and their images, for stage 1.
LLAVA_PRETRAIN = HubRelease(
    repo_id="liuhaotian/LLaVA-Pretrain",
    revision="70f9d1e5e1a697fe35830875cfc7de1dd590d727",  # the repository's one commit
    folder="LLaVA-Pretrain",
    page="https://huggingface.co/datasets/liuhaotian/LLaVA-Pretrain",
    licence="other (the dataset card): comply with the CC-3M and BLIP licences and the LAION/CC/SBU terms",
    files=(
        ReleaseFile("blip_laion_cc_sbu_558k.json", None, None, COMPUTED),
        ReleaseFile("images.zip", None, None, COMPUTED),
    ),
)

#: The Hub datasets ``maugpt download`` takes besides the MAU-Set sources.
HUB_RELEASES: dict[str, HubRelease] = {"mmad": MMAD, "llava-pretrain": LLAVA_PRETRAIN}
