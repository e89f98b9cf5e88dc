"""``sage-bench download`` end to end against a local HTTP server serving small archives built
here in the shape of the real ones."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sage_bench.cli import main
from sage_bench.data import PACS, VLCS, DomainNet, OfficeHome, TerraIncognita
from sage_bench.data import download as dl
from sage_bench.data.download import DownloadError, Installer
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree, write_image


class ArchiveServer:
    """Serves files from a folder on 127.0.0.1 with HTTP Range support. ``cut[name] = n`` sends
    only the first ``n`` bytes of the next full response for ``name`` and drops the connection."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut and not rng:
                    self.wfile.write(body[: server.cut.pop(name)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    s = ArchiveServer(tmp_path / "served")
    yield s
    s.close()


def _zip_tree(tree: Path, archive: Path, arcroot: str) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(tree.rglob("*")):
            z.write(f, Path(arcroot) / f.relative_to(tree))


def _tar_tree(tree: Path, archive: Path, arcroot: str) -> None:
    with tarfile.open(archive, "w:gz") as t:
        t.add(tree, arcname=arcroot)


@pytest.fixture
def pacs_archive(tmp_path, server, monkeypatch):
    """PACS.zip as DomainBed's Google Drive copy: everything under kfold/."""
    counts = make_tree(tmp_path / "src" / "kfold", PACS_ENVS, PACS_CLASSES, per_class=2)
    _zip_tree(tmp_path / "src" / "kfold", server.root / "PACS.zip", "kfold")
    monkeypatch.setattr(PACS, "EXPECTED_IMAGES", counts)
    return counts


def test_pacs_from_mirror_then_idempotent(tmp_path, server, pacs_archive, capsys):
    data = tmp_path / "data"
    code = main(["download", "PACS", "--data-dir", str(data), "--mirror", server.url, "--no-progress"])
    assert code == 0
    assert [p for p, _ in server.requests] == ["/PACS.zip"]
    ds = PACS(data)
    assert [len(e) for e in ds] == list(pacs_archive.values()) and ds.num_classes == 7
    marker = json.loads((data / "PACS" / ".sage-bench.json").read_text())
    digest = hashlib.sha256((server.root / "PACS.zip").read_bytes()).hexdigest()
    assert marker["sources_sha256"] == {"PACS.zip": digest} and marker["images"] == pacs_archive
    assert not (data / ".sage-bench-download" / "archives" / "PACS.zip").exists()  # removed after use
    # a second run does nothing
    assert main(["download", "PACS", "--data-dir", str(data), "--mirror", server.url]) == 0
    assert len(server.requests) == 1 and "already installed" in capsys.readouterr().out


def test_resume_after_an_interrupted_transfer(tmp_path, server, pacs_archive):
    size = (server.root / "PACS.zip").stat().st_size
    server.cut["PACS.zip"] = size // 3
    data = tmp_path / "data"
    installer = Installer(data, mirror=server.url, progress=False, log=lambda s: None)
    with pytest.raises(DownloadError, match=f"stopped at {size // 3} of {size} bytes.*again to resume"):
        installer.install("PACS")
    part = data / ".sage-bench-download" / "archives" / "PACS.zip.part"
    assert part.stat().st_size == size // 3
    installer.install("PACS")
    assert server.requests[-1] == ("/PACS.zip", f"bytes={size // 3}-")  # resumed, not restarted
    assert sum(len(e) for e in PACS(data)) == sum(pacs_archive.values())


def test_partial_file_already_complete(tmp_path, server, pacs_archive):
    data = tmp_path / "data"
    part = data / ".sage-bench-download" / "archives" / "PACS.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((server.root / "PACS.zip").read_bytes())
    Installer(data, mirror=server.url, progress=False, log=lambda s: None).install("PACS")
    assert server.requests[-1][1] == f"bytes={(server.root / 'PACS.zip').stat().st_size}-"  # answered 416
    assert (data / "PACS" / ".sage-bench.json").is_file()


def test_corrupt_archive_is_rejected(tmp_path, server, pacs_archive, capsys):
    archive = server.root / "PACS.zip"
    raw = bytearray(archive.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)  # damage file data inside the zip
    archive.write_bytes(bytes(raw))
    data = tmp_path / "data"
    code = main(["download", "PACS", "--data-dir", str(data), "--mirror", server.url, "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "PACS.zip is corrupt" in err and "deleted" in err
    assert not (data / "PACS").exists()
    assert not (data / ".sage-bench-download" / "archives" / "PACS.zip").exists()


def test_install_from_archives_without_network(tmp_path, server, pacs_archive, monkeypatch):
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "PACS.zip").write_bytes((server.root / "PACS.zip").read_bytes())

    def no_network(*args, **kwargs):
        raise AssertionError("no download expected")

    monkeypatch.setattr(dl, "http_download", no_network)
    monkeypatch.setattr(dl, "gdrive_download", no_network)
    data = tmp_path / "data"
    assert main(["download", "PACS", "--data-dir", str(data), "--archives", str(archives)]) == 0
    assert (archives / "PACS.zip").is_file()  # never deleted
    assert sum(len(e) for e in PACS(data)) == sum(pacs_archive.values())


def test_corrupt_local_archive_is_not_deleted(tmp_path, pacs_archive, server):
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "PACS.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DownloadError, match="corrupt.*Replace that file"):
        Installer(tmp_path / "data", archives=archives, log=lambda s: None).install("PACS")
    assert (archives / "PACS.zip").is_file()


def test_wrong_counts_are_an_error(tmp_path, server, pacs_archive, monkeypatch):
    monkeypatch.setattr(PACS, "EXPECTED_IMAGES", {env: 99 for env in PACS_ENVS})
    with pytest.raises(DownloadError, match="gave 56 images.*--no-count-check"):
        Installer(tmp_path / "data", mirror=server.url, progress=False, log=lambda s: None).install("PACS")
    assert not (tmp_path / "data" / "PACS").exists()
    # the same total spread differently over the environments is accepted (and recorded as such)
    monkeypatch.setattr(PACS, "EXPECTED_IMAGES", {"art_painting": 20, "cartoon": 12, "photo": 12, "sketch": 12})
    Installer(tmp_path / "data", mirror=server.url, progress=False, log=lambda s: None).install("PACS")
    marker = json.loads((tmp_path / "data" / "PACS" / ".sage-bench.json").read_text())
    assert marker["version"] == "published counts (total; per-environment counts differ)"
    # a count matching nothing installs only when asked to
    monkeypatch.setattr(PACS, "EXPECTED_IMAGES", {env: 99 for env in PACS_ENVS})
    data = tmp_path / "data2"
    assert main(["download", "PACS", "--data-dir", str(data), "--mirror", server.url, "--no-count-check", "--no-progress"]) == 0
    assert sum(len(e) for e in PACS(data)) == 56


def test_existing_complete_folder_is_adopted_and_incomplete_refused(tmp_path, monkeypatch):
    counts = make_tree(tmp_path / "data" / "VLCS", VLCS.ENV_FOLDERS, ["bird", "car"], per_class=1)
    monkeypatch.setattr(VLCS, "EXPECTED_IMAGES", counts)
    installer = Installer(tmp_path / "data", log=lambda s: None)
    installer.install("VLCS")  # e.g. made by DomainBed's own script: recorded, nothing fetched
    assert (tmp_path / "data" / "VLCS" / ".sage-bench.json").is_file()
    make_tree(tmp_path / "data" / "office_home", ["Art"], ["Bed"], per_class=1)
    with pytest.raises(DownloadError, match="not a complete OfficeHome.*--force"):
        installer.install("OfficeHome")


def _recipe_at(server, name, monkeypatch):
    """Point a recipe's direct (non-mirror) sources at the local server."""
    recipe = dl.RECIPES[name]
    sources = tuple(
        dl.Source(s.filename, f"{server.url}/{s.filename}", None, s.size, s.sha256, s.extract) for s in recipe.sources
    )
    monkeypatch.setitem(dl.RECIPES, name, dl.Recipe(sources, recipe.arrange))


def test_vlcs_and_office_home_tarball_and_zip(tmp_path, server, monkeypatch):
    vlcs = make_tree(tmp_path / "v", VLCS.ENV_FOLDERS, ["bird", "car", "chair", "dog", "person"], per_class=1)
    _tar_tree(tmp_path / "v", server.root / "VLCS.tar.gz", "VLCS")
    office = make_tree(tmp_path / "o", OfficeHome.ENV_FOLDERS, ["Alarm_Clock", "Bed"], per_class=1)
    (tmp_path / "o" / "ImageInfo.csv").write_text("x\n")
    _zip_tree(tmp_path / "o", server.root / "office_home.zip", "OfficeHomeDataset_10072016")
    monkeypatch.setattr(VLCS, "EXPECTED_IMAGES", vlcs)
    monkeypatch.setattr(OfficeHome, "EXPECTED_IMAGES", office)
    data = tmp_path / "data"
    assert main(["download", "VLCS", "OfficeHome", "--data-dir", str(data), "--mirror", server.url, "--no-progress"]) == 0
    assert [len(e) for e in VLCS(data)] == list(vlcs.values())
    assert OfficeHome(data).class_names == ["alarm clock", "bed"]


def test_domain_net_removes_listed_duplicates(tmp_path, server, monkeypatch):
    classes = ["aircraft_carrier", "zebra"]
    for env in DomainNet.ENV_FOLDERS:
        make_tree(tmp_path / "d", [env], classes, per_class=3, suffix=".jpg")
        _zip_tree(tmp_path / "d" / env, server.root / f"{env}.zip", env)
    duplicates = ["clipart/zebra/0.jpg", "real/aircraft_carrier/2.jpg", "sketch/zebra/1.jpg", "painting/zebra/9.jpg"]
    listing = ("\n".join(duplicates) + "\n").encode()
    (server.root / "domain_net_duplicates.txt").write_bytes(listing)
    _recipe_at(server, "DomainNet", monkeypatch)
    # the recorded checksum guards the list: a different list is refused
    with pytest.raises(DownloadError, match="domain_net_duplicates.txt.*(bytes|SHA-256)"):
        Installer(tmp_path / "data", progress=False, log=lambda s: None).install("DomainNet")
    recipe = dl.RECIPES["DomainNet"]
    sources = tuple(
        dl.Source(s.filename, s.url, None, len(listing), hashlib.sha256(listing).hexdigest(), False)
        if s.filename == "domain_net_duplicates.txt" else s
        for s in recipe.sources
    )  # fmt: skip
    monkeypatch.setitem(dl.RECIPES, "DomainNet", dl.Recipe(sources, recipe.arrange))
    expected = {env: 6 for env in DomainNet.ENV_FOLDERS}
    for d in duplicates[:3]:  # painting/zebra/9.jpg does not exist
        expected[d.split("/")[0]] -= 1
    monkeypatch.setattr(DomainNet, "EXPECTED_IMAGES", expected)
    data = tmp_path / "data"
    Installer(data, progress=False, log=lambda s: None).install("DomainNet")
    assert not (data / "domain_net" / "clipart" / "zebra" / "0.jpg").exists()
    assert [len(e) for e in DomainNet(data)] == list(expected.values())
    assert {p for p, _ in server.requests} >= {f"/{env}.zip" for env in DomainNet.ENV_FOLDERS}


def test_pinned_duplicates_list_checksum():
    source = next(s for s in dl.RECIPES["DomainNet"].sources if s.filename == "domain_net_duplicates.txt")
    assert dl.DOMAINBED_COMMIT in source.url and len(source.sha256) == 64 and source.size == 365663


@pytest.mark.filterwarnings("ignore:TerraIncognita")
def test_terra_incognita_from_annotations(tmp_path, server, monkeypatch):
    images = tmp_path / "t" / "eccv_18_all_images_sm"
    categories = [{"id": i, "name": n} for i, n in enumerate(["bird", "cat", "car", "empty"])]
    records, annotations = [], []
    plan = [  # (location, categories of the image)
        (38, ["bird"]), (38, ["cat"]), (46, ["empty"]), (100, ["bird", "cat"]), (43, ["cat"]),
        (43, ["car"]),  # not one of DomainBed's ten categories
        (7, ["bird"]),  # not one of DomainBed's four locations
        (46, ["bird"]), (100, ["empty"]), (38, ["bird"]),
    ]  # fmt: skip
    names = {c["name"]: c["id"] for c in categories}
    for i, (location, cats) in enumerate(plan):
        file_name = f"img{i:03d}.jpg"
        write_image(images / file_name, seed=i)
        records.append({"id": f"id{i}", "file_name": file_name, "location": location})
        annotations += [{"image_id": f"id{i}", "category_id": names[c]} for c in cats]
    split_files = ["cis_test", "cis_val", "train", "trans_test", "trans_val"]
    notes = tmp_path / "t" / "eccv_18_annotation_files"
    notes.mkdir(parents=True)
    for k, split in enumerate(split_files):  # images spread over the five files
        part = {"images": records[k::5], "annotations": [a for a in annotations if a["image_id"] in {r["id"] for r in records[k::5]}],
                "categories": categories}  # fmt: skip
        (notes / f"{split}_annotations.json").write_text(json.dumps(part))
    _tar_tree(images, server.root / "eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm")
    _tar_tree(notes, server.root / "eccv_18_annotations.tar.gz", "eccv_18_annotation_files")
    _recipe_at(server, "TerraIncognita", monkeypatch)

    expected = {f"location_{loc}": 0 for loc in (100, 38, 43, 46)}
    for location, cats in plan:
        if f"location_{location}" in expected:
            expected[f"location_{location}"] += sum(c in TerraIncognita.CATEGORIES for c in cats)
    monkeypatch.setattr(TerraIncognita, "EXPECTED_IMAGES", expected)
    data = tmp_path / "data"
    Installer(data, progress=False, log=lambda s: None).install("TerraIncognita")
    root = data / "terra_incognita"
    assert (root / "location_100" / "bird" / "img003.jpg").is_file()
    assert (root / "location_100" / "cat" / "img003.jpg").is_file()  # one image, two categories
    assert not (root / "location_7").exists() and not list(root.rglob("car"))
    ds = TerraIncognita(data)
    assert [len(e) for e in ds] == list(expected.values()) and ds.class_names == ["bird", "cat", "empty"]


def test_unknown_name_and_missing_archives_dir(tmp_path, capsys):
    assert main(["download", "PACSS", "--data-dir", str(tmp_path)]) == 2
    assert "unknown dataset(s) 'PACSS'" in capsys.readouterr().err
    assert main(["download", "PACS", "--data-dir", str(tmp_path), "--archives", str(tmp_path / "no")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_unreachable_source_says_how_to_install_offline(tmp_path, server):
    with pytest.raises(DownloadError) as info:
        Installer(tmp_path / "data", mirror=server.url + "/missing", progress=False, log=lambda s: None).install("PACS")
    assert "--archives DIR" in str(info.value) and "PACS.zip" in str(info.value)
