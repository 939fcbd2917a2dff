"""Downloads of the public releases, against a server these tests start on 127.0.0.1: resume after a
cut connection, a wrong hash, a licence not accepted, a second run that fetches nothing, a file
behind a form, and the build that follows."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from maugpt.download import COMPUTED, DownloadError, Downloads, Release, ReleaseFile
from tests.mauset import releases


class Server:
    """Serves ``files`` (path → bytes) with HTTP range requests; ``cut[path] = n`` sends the first
    full response's headers, then only n bytes, and closes the connection."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut, self.requests = files, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"][len("bytes=") : -1]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                cut = server.cut.pop(self.path, None)
                self.wfile.write(body[start : start + cut] if cut is not None else body[start:])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def zipped(tree: Path, top: Path) -> bytes:
    """``top`` (a folder under ``tree``) zipped with paths relative to ``tree``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(top.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tree).as_posix())
    return buffer.getvalue()


@pytest.fixture
def ksdd2_zip(tmp_path) -> bytes:
    """A small KolektorSDD2 release (``KSDD2/{train,test}``), zipped as a publisher would."""
    tree = tmp_path / "tree"
    releases.ksdd2(tree)
    return zipped(tree, tree)


@pytest.fixture
def server():
    started = Server({})
    yield started
    started.close()


def release(server: Server, body: bytes, *, sha256: str | None, name: str = "KolektorSDD2.zip") -> Release:
    server.files[f"/{name}"] = body
    return Release(
        page=f"{server.url}/page",
        licence="CC BY-NC-SA 4.0 (test)",
        files=(ReleaseFile(name, f"{server.url}/{name}", sha256, "the test's own hash" if sha256 else COMPUTED),),
    )


def quiet(root: Path, said: list[str]) -> Downloads:
    return Downloads(root, say=said.append)


def test_a_cut_connection_is_resumed_with_a_range_request_then_verified_and_unpacked(tmp_path, server, ksdd2_zip):
    rel = release(server, ksdd2_zip, sha256=hashlib.sha256(ksdd2_zip).hexdigest())
    server.cut["/KolektorSDD2.zip"] = len(ksdd2_zip) // 3
    said: list[str] = []
    dest = quiet(tmp_path / "root", said).install("ksdd2", rel, accept_licence=True)
    assert server.requests == [("/KolektorSDD2.zip", None), ("/KolektorSDD2.zip", f"bytes={len(ksdd2_zip) // 3}-")]
    assert dest == tmp_path / "root" / "ksdd2"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == sorted(
        f"KSDD2/{split}/{i}{suffix}.png"
        for split, ids in (("train", (10, 11, 12)), ("test", (20, 21)))
        for i in ids
        for suffix in ("", "_GT")
    )
    assert (tmp_path / "root" / ".downloads" / "ksdd2" / "KolektorSDD2.zip").read_bytes() == ksdd2_zip
    assert any("verified (the test's own hash)" in line for line in said)


def test_a_second_run_downloads_nothing_and_the_build_follows(tmp_path, server, ksdd2_zip):
    from maugpt.commands import build

    rel = release(server, ksdd2_zip, sha256=hashlib.sha256(ksdd2_zip).hexdigest())
    quiet(tmp_path / "root", []).install("ksdd2", rel, accept_licence=True)
    said: list[str] = []
    quiet(tmp_path / "root", said).install("ksdd2", rel)  # accepted once: no flag needed again
    assert len(server.requests) == 1 and said[-1].startswith("ksdd2: already downloaded, verified and unpacked")
    build(source="ksdd2", root=tmp_path / "root" / "ksdd2", out=tmp_path / "out", max_side=32, partial=True)
    assert (tmp_path / "out" / "train" / "index.json").is_file()


def test_a_wrong_hash_removes_the_file_names_it_and_unpacks_nothing(tmp_path, server, ksdd2_zip):
    rel = release(server, ksdd2_zip, sha256="0" * 64)
    with pytest.raises(DownloadError, match=r"ksdd2: KolektorSDD2.zip has sha256 [0-9a-f]{64}, expected 0{64} "):
        quiet(tmp_path / "root", []).install("ksdd2", rel, accept_licence=True)
    assert list((tmp_path / "root" / ".downloads" / "ksdd2").iterdir()) == []
    assert not (tmp_path / "root" / "ksdd2").exists()


def test_the_licence_must_be_accepted_before_anything_is_fetched(tmp_path, server, ksdd2_zip):
    rel = release(server, ksdd2_zip, sha256=None)
    with pytest.raises(
        DownloadError, match=r"licence \(CC BY-NC-SA 4.0 \(test\)\) has not been accepted.*--accept_licence"
    ):
        quiet(tmp_path / "root", []).install("ksdd2", rel)
    assert server.requests == []


def test_an_unpublished_hash_is_computed_printed_and_held_to_afterwards(tmp_path, server, ksdd2_zip):
    rel = release(server, ksdd2_zip, sha256=None)
    said: list[str] = []
    quiet(tmp_path / "a", said).install("ksdd2", rel, accept_licence=True)
    digest = hashlib.sha256(ksdd2_zip).hexdigest()
    assert f"ksdd2: KolektorSDD2.zip sha256 {digest} ({COMPUTED}" in said[1]
    # the same root, the file gone and the server now serving other bytes: refused
    (tmp_path / "a" / ".downloads" / "ksdd2" / "KolektorSDD2.zip").unlink()
    (tmp_path / "a" / "ksdd2" / ".download.json").unlink()
    server.files["/KolektorSDD2.zip"] = ksdd2_zip + b"tampered"
    with pytest.raises(DownloadError, match=f"expected {digest} \\({COMPUTED}\\)"):
        quiet(tmp_path / "a", []).install("ksdd2", rel)


def test_a_file_behind_a_form_names_its_page_and_folder_then_verifies_what_the_user_saved(tmp_path, ksdd2_zip):
    rel = Release(
        page="https://example.org/form",
        licence="CC BY-NC-SA 4.0 (test)",
        files=(ReleaseFile("KolektorSDD2.zip", None, hashlib.sha256(ksdd2_zip).hexdigest(), "the test's own hash"),),
    )
    saved = tmp_path / "root" / ".downloads" / "ksdd2" / "KolektorSDD2.zip"
    with pytest.raises(DownloadError, match=f"download it from https://example.org/form .* save it as {saved}"):
        quiet(tmp_path / "root", []).install("ksdd2", rel, accept_licence=True)
    saved.write_bytes(ksdd2_zip)
    dest = quiet(tmp_path / "root", []).install("ksdd2", rel)
    assert (dest / "KSDD2" / "train" / "11_GT.png").is_file()


def test_an_http_error_and_a_member_outside_the_folder_are_named(tmp_path, server):
    missing = Release(page="p", licence="l", files=(ReleaseFile("x.zip", f"{server.url}/x.zip", None, COMPUTED),))
    with pytest.raises(DownloadError, match=r"/x.zip: HTTP 404"):
        quiet(tmp_path / "root", []).install("ksdd2", missing, accept_licence=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../escape.txt", "x")
    evil = release(server, buffer.getvalue(), sha256=None, name="evil.zip")
    with pytest.raises(DownloadError, match=r"member '../escape.txt' would be written outside"):
        quiet(tmp_path / "root", []).install("evil", evil, accept_licence=True)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "root" / "escape.txt").exists()


def test_maugpt_download_then_build_through_the_command_line(tmp_path, server, ksdd2_zip, monkeypatch, capsys):
    import dataclasses

    from maugpt.cli import main
    from maugpt.mauset.sources import SOURCES

    rel = release(server, ksdd2_zip, sha256=hashlib.sha256(ksdd2_zip).hexdigest())
    monkeypatch.setitem(SOURCES, "ksdd2", dataclasses.replace(SOURCES["ksdd2"], release=rel))
    root = tmp_path / "releases"
    with pytest.raises(SystemExit, match=r"^download: ksdd2: its licence .* --accept_licence$"):
        main(["download", "ksdd2", "--root", str(root)])
    main(["download", "ksdd2", "--root", str(root), "--accept_licence", "true"])
    out = capsys.readouterr().out
    assert "ksdd2: CC BY-NC-SA 4.0 (test)" in out and f"ksdd2: 10 files unpacked into {root / 'ksdd2'}" in out
    main(
        [
            "build",
            "--source",
            "ksdd2",
            "--root",
            str(root / "ksdd2"),
            "--out",
            str(tmp_path / "out"),
            "--partial",
            "true",
        ]
    )
    assert (tmp_path / "out" / "test" / "index.json").is_file()


def test_a_github_archives_top_folder_is_dropped_and_stray_copies_are_skipped(tmp_path):
    from maugpt.download import unpack

    archive = tmp_path / "repo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("DeepPCB-08e98c4/PCBData/test.txt", "x")
        zf.writestr("DeepPCB-08e98c4/PCBData/group1/1/1_test.jpg", "x")
        zf.writestr("DeepPCB-08e98c4/PCBData/group1/1/1_test (copy).jpg", "x")
    assert unpack(archive, tmp_path / "a", strip_top=True, skip=("* (copy)*",)) == 2
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.*")) == [
        "PCBData/group1/1/1_test.jpg",
        "PCBData/test.txt",
    ]
    # without strip_top, or with more than one top folder, the tree stays as it is
    assert unpack(archive, tmp_path / "b") == 3 and (tmp_path / "b" / "DeepPCB-08e98c4" / "PCBData").is_dir()


def test_every_source_records_its_release_page_licence_and_where_each_hash_comes_from():
    from maugpt.mauset.sources import SOURCES

    assert sorted(SOURCES) == ["btad", "dagm", "deeppcb", "ksdd2", "magnetic_tile", "mpdd", "mvtec_ad"]
    for name, source in SOURCES.items():
        release = source.release
        assert release is not None and release.page.startswith("https://") and release.licence, name
        for file in release.files:
            assert (file.sha256 is None) == (file.sha256_from == COMPUTED), (name, file.name)
            assert file.sha256 is None or len(bytes.fromhex(file.sha256)) == 32, (name, file.name)
            assert file.url is None or file.url.startswith("https://"), (name, file.name)
    published = {n: f.sha256_from for n, s in SOURCES.items() for f in s.release.files if f.sha256}
    assert sorted(published) == ["btad", "mvtec_ad"] and all("anomalib" in v for v in published.values())
    assert [f.url for f in SOURCES["mpdd"].release.files] == [None]  # a SharePoint folder: saved by hand


def hub_cache(cache: Path, repo_id: str, revision: str, files: dict[str, bytes]) -> None:
    """``files`` as the Hugging Face cache holds a dataset at ``revision``: blobs named by their
    SHA-256 (as large files are), linked from the revision's snapshot."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    pinned = len(revision) == 40  # a commit: its snapshot directly; a branch: a ref to a commit
    commit = revision if pinned else "0123456789abcdef0123456789abcdef01234567"
    if not pinned:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / revision).write_text(commit)
    for name, body in files.items():
        blob = repo / "blobs" / hashlib.sha256(body).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(body)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../..") / "blobs" / blob.name)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_mmad_from_the_hub_cache_offline_unpacks_into_the_layout_the_mmad_data_reads(tmp_path, offline_hub):
    from maugpt.download import MMAD, install_hub
    from maugpt.mmad.scoring import load_questions
    from tests.mmad.test_data import QUESTIONS, write_tree

    tree = write_tree(tmp_path / "tree")
    files = {"mmad.json": (tree / "mmad.json").read_bytes()}
    files["MVTec-AD.zip"] = zipped(tree, tree / "MVTec-AD")  # members under MVTec-AD/
    files["DS-MVTec.zip"] = zipped(tree, tree / "DS-MVTec")
    files["VisA.zip"] = zipped(tree / "VisA", tree / "VisA")  # members without their top folder
    hub = dataclasses.replace(MMAD, files=tuple(ReleaseFile(n, None, None, COMPUTED) for n in files))
    hub_cache(offline_hub, MMAD.repo_id, MMAD.revision, files)
    said: list[str] = []
    dest = install_hub(Downloads(tmp_path / "data", say=said.append), "mmad", hub, accept_licence=True)
    assert dest == tmp_path / "data" / "MMAD"
    expected = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == sorted([*expected, ".download.json"])
    assert all((dest / p).read_bytes() == (tree / p).read_bytes() for p in expected)
    assert len(load_questions(dest / "mmad.json")) == QUESTIONS
    assert sum("verified (the Hub's record of the file (its LFS object id))" in line for line in said) == 4
    # the packaged description holds the release's published hash, which the test's file lacks:
    # refused and named, and the cache's copy removed (the next run fetches it again)
    blob = offline_hub / "datasets--jiang-cc--MMAD" / "blobs" / hashlib.sha256(files["mmad.json"]).hexdigest()
    with pytest.raises(DownloadError, match=rf"mmad: mmad.json has sha256 \w+, expected {MMAD.files[0].sha256} "):
        install_hub(Downloads(tmp_path / "other", say=said.append), "mmad", MMAD, accept_licence=True)
    assert not blob.exists() and not (tmp_path / "other" / "MMAD").exists()


def test_llava_pretrain_from_the_hub_cache_then_build_llava_reads_it(tmp_path, offline_hub, capsys):
    from maugpt.cli import main
    from maugpt.data.shards import iter_samples
    from maugpt.download import LLAVA_PRETRAIN

    tree = tmp_path / "tree"
    releases.image(tree / "00453" / "004539375.jpg", size=(64, 48))
    record = {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "a red car"}],
    }
    files = {"blip_laion_cc_sbu_558k.json": json.dumps([record]).encode(), "images.zip": zipped(tree, tree)}
    hub_cache(offline_hub, LLAVA_PRETRAIN.repo_id, LLAVA_PRETRAIN.revision, files)
    root = tmp_path / "data"
    main(["download", "llava-pretrain", "--root", str(root), "--accept_licence", "true"])
    assert "llava-pretrain: 2 files in" in capsys.readouterr().out
    folder = root / "LLaVA-Pretrain"
    assert (folder / "images" / "00453" / "004539375.jpg").is_file()
    main(
        [
            "build-llava",
            "--annotations",
            str(folder / "blip_laion_cc_sbu_558k.json"),
            "--images",
            str(folder / "images"),
            "--out",
            str(tmp_path / "shards"),
            "--max_side",
            "32",
        ]
    )
    assert [s["json"]["key"] for s in iter_samples(tmp_path / "shards" / "train")] == ["llava_pretrain/004539375"]
