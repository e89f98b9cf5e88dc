"""Download, verify, extract and arrange the real data sets (``sage-bench download``).

The DomainBed sources are DomainBed's (``domainbed/scripts/download.py``): Google Drive copies of
PACS, VLCS and OfficeHome, the VisDA-2019 server for DomainNet, LILA's Caltech Camera Traps
archives for TerraIncognita. The multi-task sets NYUv2 and Cityscapes are MTAN's preprocessed
``.npy`` folders on Dropbox, the links the MTAN, CAGrad, Nash-MTL and FAMO READMEs give (a shared
Dropbox folder downloads as one zip with ``dl=1``; a zip found inside it is extracted too). Each
archive is taken, in order, from

1. ``archives=DIR``: a folder that already holds the archive under its file name (clusters whose
   compute nodes have no internet: copy the archives there first; they are never deleted);
2. ``mirror=URL``: ``URL/<file name>``, e.g. an institute web server that holds the archives;
3. the original source (Google Drive through ``gdown``, or HTTP).

HTTP downloads resume a partial ``<file>.part`` with a Range request. The publishers give no
checksums for these archives, so what is verified is what can be: the size the server announces,
the SHA-256 where this module records one, the archive's own integrity (every member read back
through its CRC), and, after extraction, the number of images per environment against the
published counts (for NYUv2 and Cityscapes: samples per split). The one file with a recorded checksum is DomainBed's list of DomainNet
duplicates, fetched from DomainBed's repository at a pinned commit.

Installation is staged under ``<data_dir>/.sage-bench-download/`` and moved into place only when
complete; a marker file ``<folder>/.sage-bench.json`` records what was installed, so a second run
does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sage_bench.data.domainbed import REAL_DATASETS
from sage_bench.data.images import MultiEnvironmentImageFolder, find_images, list_folders
from sage_bench.data.nyuv2 import NPY_DATASETS, NpyMultiTaskDataset
from sage_bench.errors import UserError

MARKER = ".sage-bench.json"
WORK_DIR = ".sage-bench-download"
CHUNK = 1 << 20

DOMAINBED_COMMIT = "b93c22a1cfc3b2428398272c1a116c8de1f4139e"
DOMAINBED_RAW = f"https://raw.githubusercontent.com/facebookresearch/DomainBed/{DOMAINBED_COMMIT}"


class DownloadError(UserError):
    """A download, verification or extraction that failed; the message says what to do."""


# every data set ``sage-bench download`` installs, and the names that stand for several
DOWNLOADABLE: dict[str, type[MultiEnvironmentImageFolder] | type[NpyMultiTaskDataset]] = {
    **REAL_DATASETS,
    **NPY_DATASETS,
}
GROUPS: dict[str, list[str]] = {
    "all": list(DOWNLOADABLE),
    "domainbed": list(REAL_DATASETS),
    "mtl": list(NPY_DATASETS),
}


def expand_names(names: Iterable[str]) -> list[str]:
    """Data set names with the group names (``all``, ``domainbed``, ``mtl``) expanded, in order
    and without repeats; an unknown name is an error that lists the valid ones."""
    names = list(names)
    unknown = [n for n in names if n not in DOWNLOADABLE and n not in GROUPS]
    if unknown:
        raise DownloadError(
            f"unknown dataset(s) {', '.join(map(repr, unknown))}; valid choices: "
            f"{', '.join(DOWNLOADABLE)}, or {', '.join(GROUPS)}"
        )
    expanded: list[str] = []
    for name in names:
        for member in GROUPS.get(name, [name]):
            if member not in expanded:
                expanded.append(member)
    return expanded


@dataclass(frozen=True)
class Source:
    """One file of a data set: its name (on disk, in ``archives=``, on a mirror), where DomainBed
    gets it, and what is known about it."""

    filename: str
    url: str
    gdrive_id: str | None = None
    size: int | None = None  # bytes, where established
    sha256: str | None = None  # where established
    extract: bool = True  # an archive to extract (False: a plain file, e.g. a list)


@dataclass(frozen=True)
class Recipe:
    """How to build one data set: its sources and how to arrange what they extract to."""

    sources: tuple[Source, ...]
    arrange: Callable[[type[MultiEnvironmentImageFolder], Path, dict[str, Path]], Path]


def _gdrive(filename: str, file_id: str) -> Source:
    return Source(filename, f"https://drive.google.com/uc?id={file_id}", gdrive_id=file_id)


# ---------------------------------------------------------------------------------------------
# Arranging extracted archives into DomainBed's layout. Each function gets the data set class,
# the staging folder the archives were extracted into and the paths of plain files; it returns
# the folder that holds the environment folders.


def find_environment_root(cls: type[MultiEnvironmentImageFolder], staging: Path, depth: int = 3) -> Path:
    """The folder under ``staging`` (at most ``depth`` levels down) holding every environment
    folder of ``cls`` (PACS.zip extracts to ``kfold/``, OfficeHome's to
    ``OfficeHomeDataset_10072016/``, VLCS's to ``VLCS/``)."""
    candidates = [staging]
    for _ in range(depth + 1):
        for folder in candidates:
            if all((folder / env).is_dir() for env in cls.ENV_FOLDERS):
                return folder
        candidates = [folder / name for folder in candidates for name in list_folders(folder)]
    raise DownloadError(
        f"the {cls.name()} archive did not contain the environment folders "
        f"{', '.join(cls.ENV_FOLDERS)}; is it the right archive?"
    )


def _arrange_folders(cls, staging: Path, files: dict[str, Path]) -> Path:
    return find_environment_root(cls, staging)


def _read_duplicates(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _arrange_domain_net(cls, staging: Path, files: dict[str, Path]) -> Path:
    """Remove DomainBed's list of duplicate DomainNet files (paths relative to ``domain_net/``)."""
    root = find_environment_root(cls, staging)
    missing = 0
    for relative in _read_duplicates(files["domain_net_duplicates.txt"]):
        path = root / relative
        if path.resolve().is_relative_to(root.resolve()) and path.is_file():
            path.unlink()
        else:
            missing += 1
    if missing:
        print(f"DomainNet: {missing} listed duplicate file(s) were not in the archives")
    return root


def _arrange_terra_incognita(cls, staging: Path, files: dict[str, Path]) -> Path:
    """DomainBed's recipe: the images of four camera locations, one folder per location and per
    category (ten categories), from the five annotation files of the ECCV'18 split."""
    images_dir = staging / "eccv_18_all_images_sm"
    annotations_dir = staging / "eccv_18_annotation_files"
    if not images_dir.is_dir() or not annotations_dir.is_dir():
        raise DownloadError(
            "the TerraIncognita archives did not contain eccv_18_all_images_sm/ and "
            "eccv_18_annotation_files/; are they eccv_18_all_images_sm.tar.gz and eccv_18_annotations.tar.gz?"
        )
    merged: dict[str, list] = defaultdict(list)
    for name in ("cis_test", "cis_val", "train", "trans_test", "trans_val"):
        path = annotations_dir / f"{name}_annotations.json"
        if not path.is_file():
            raise DownloadError(f"TerraIncognita annotation file {path.name} is missing from the archive")
        for key, values in json.loads(path.read_text()).items():
            merged[key].extend(values)
    categories = {c["id"]: c["name"] for c in merged["categories"]}
    by_image: dict[str, list[str]] = defaultdict(list)
    for annotation in merged["annotations"]:
        by_image[annotation["image_id"]].append(categories[annotation["category_id"]])
    out = staging / "terra_incognita"
    out.mkdir()
    for image in merged["images"]:
        location = str(image["location"])
        if location not in cls.LOCATIONS:
            continue
        location_dir = out / f"location_{location}"
        location_dir.mkdir(exist_ok=True)
        for category in by_image.get(image["id"], []):
            if category not in cls.CATEGORIES:
                continue
            target = location_dir / category / image["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(images_dir / image["file_name"], target)
    return out


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def find_split_root(cls: type[NpyMultiTaskDataset], staging: Path, depth: int = 3) -> Path | None:
    """The folder under ``staging`` (at most ``depth`` levels down) that holds every split and
    modality folder of ``cls``, or ``None``."""
    candidates = [staging]
    for _ in range(depth + 1):
        for folder in candidates:
            if cls.count(folder) is not None:
                return folder
        candidates = [folder / name for folder in candidates for name in list_folders(folder)]
    return None


def _arrange_npy(cls, staging: Path, files: dict[str, Path]) -> Path:
    """MTAN's ``{train,val}/<modality>/<i>.npy`` folders, wherever the archive put them; archives
    inside the archive (a Dropbox folder holding a zip) are extracted first if needed."""
    root = find_split_root(cls, staging)
    if root is None:
        inner = sorted(p for p in staging.rglob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))
        for path in inner:
            extract(path, path.parent / f"{path.name}.extracted")
            path.unlink()
        root = find_split_root(cls, staging, depth=5)
    if root is None:
        folders = ", ".join(f"{{train,val}}/{f}" for f in cls.FOLDERS.values())
        raise DownloadError(
            f"the {cls.name()} archive did not contain the folders {folders}; is it the right archive?"
        )
    return root


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


RECIPES: dict[str, Recipe] = {
    "PACS": Recipe((_gdrive("PACS.zip", "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"),), _arrange_folders),
    "VLCS": Recipe((_gdrive("VLCS.tar.gz", "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"),), _arrange_folders),
    "OfficeHome": Recipe((_gdrive("office_home.zip", "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"),), _arrange_folders),
    "TerraIncognita": Recipe(
        (
            Source(
                "eccv_18_all_images_sm.tar.gz",
                "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/eccv_18_all_images_sm.tar.gz",
            ),
            Source(
                "eccv_18_annotations.tar.gz",
                "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/eccv_18_annotations.tar.gz",
            ),
        ),
        _arrange_terra_incognita,
    ),
    "DomainNet": Recipe(
        (
            Source("clipart.zip", "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/clipart.zip"),
            Source("infograph.zip", "http://csr.bu.edu/ftp/visda/2019/multi-source/infograph.zip"),
            Source("painting.zip", "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/painting.zip"),
            Source("quickdraw.zip", "http://csr.bu.edu/ftp/visda/2019/multi-source/quickdraw.zip"),
            Source("real.zip", "http://csr.bu.edu/ftp/visda/2019/multi-source/real.zip"),
            Source("sketch.zip", "http://csr.bu.edu/ftp/visda/2019/multi-source/sketch.zip"),
            Source(
                "domain_net_duplicates.txt",
                f"{DOMAINBED_RAW}/domainbed/misc/domain_net_duplicates.txt",
                size=365663,
                sha256="a52b4ab70203f4f3df381077694dba3e33ff44c26407e1c5faca76919c702770",
                extract=False,
            ),
        ),
        _arrange_domain_net,
    ),
    "NYUv2": Recipe(
        (Source("nyuv2.zip", "https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=1"),),
        _arrange_npy,
    ),
    "Cityscapes": Recipe(
        (Source("cityscapes.zip", "https://www.dropbox.com/sh/gaw6vh6qusoyms6/AADwWi0Tp3E3M4B2xzeGlsEna?dl=1"),),
        _arrange_npy,
    ),
}


# ---------------------------------------------------------------------------------------------
# Fetching one file.


def http_download(url: str, dest: Path, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with a Range request when the server
    allows it. Fails if fewer bytes arrive than the server announced."""
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sage-bench"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part is complete
            total = exc.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                part.replace(dest)
                return dest
        raise
    with response:
        if have and response.status == 206:
            mode, start = "ab", have
        else:  # the server ignored the range: start over
            mode, start = "wb", 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, mode) as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(
            f"{url}: the transfer stopped at {got} of {total} bytes; run the same command again to resume"
        )
    part.replace(dest)
    return dest


def gdrive_download(file_id: str, dest: Path, progress: bool = True) -> Path:
    """Download a Google Drive file with gdown (which resumes a partial download itself)."""
    import gdown

    result = gdown.download(id=file_id, output=str(dest), quiet=not progress, resume=True)
    if result is None or not dest.is_file():
        raise DownloadError(f"gdown could not download Google Drive file {file_id}")
    return dest


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, source: Source) -> str:
    """Check size, checksum and archive integrity; return the file's SHA-256."""
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise DownloadError(f"{path}: {size} bytes, expected {source.size}")
    digest = sha256sum(path)
    if source.sha256 is not None and digest != source.sha256:
        raise DownloadError(f"{path}: SHA-256 {digest}, expected {source.sha256}")
    if source.extract:
        test_archive(path)
    return digest


def test_archive(path: Path) -> None:
    """Read every member of a zip or tar archive back through its checksum."""
    try:
        if path.suffix == ".zip" or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise DownloadError(f"archive {path} is corrupt: member {bad} fails its CRC check")
        else:
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isfile():
                        handle = archive.extractfile(member)
                        assert handle is not None
                        while handle.read(CHUNK):
                            pass
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DownloadError(f"archive {path} is corrupt or incomplete ({type(exc).__name__}: {detail})") from exc


def extract(path: Path, into: Path) -> None:
    """Extract a zip or tar archive into ``into``, refusing members that would land outside."""
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            archive.extractall(into)  # zipfile strips absolute paths and ".." itself
        return
    with tarfile.open(path, "r:*") as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(into, filter="data")
        else:  # Python without extraction filters: check the paths ourselves
            root = into.resolve()
            for member in archive.getmembers():
                if not (root / member.name).resolve().is_relative_to(root) or member.issym() or member.islnk():
                    raise DownloadError(f"archive {path} has an unsafe member {member.name!r}")
            archive.extractall(into)


# ---------------------------------------------------------------------------------------------
# Installing a data set.


@dataclass
class Installer:
    """Installs data sets into ``data_dir``; see the module docstring for where files come from."""

    data_dir: Path
    archives: Path | None = None
    mirror: str | None = None
    keep_archives: bool = False
    force: bool = False
    check_counts: bool = True  # False: install even if the image counts match no published version
    progress: bool = True
    log: Callable[[str], None] = print
    recipes: dict[str, Recipe] = field(default_factory=lambda: dict(RECIPES))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.archives is not None:
            self.archives = Path(self.archives)
            if not self.archives.is_dir():
                raise DownloadError(f"--archives {self.archives}: no such folder")

    @property
    def work_dir(self) -> Path:
        return self.data_dir / WORK_DIR

    def fetch(self, source: Source) -> tuple[Path, bool]:
        """The local path of ``source`` and whether it was downloaded (so may be deleted)."""
        if self.archives is not None and (self.archives / source.filename).is_file():
            self.log(f"  {source.filename}: using {self.archives / source.filename}")
            return self.archives / source.filename, False
        downloads = self.work_dir / "archives"
        downloads.mkdir(parents=True, exist_ok=True)
        dest = downloads / source.filename
        if dest.is_file():
            self.log(f"  {source.filename}: already downloaded")
            return dest, True
        where = f"{self.mirror.rstrip('/')}/{source.filename}" if self.mirror else source.url
        self.log(f"  {source.filename}: downloading {where}")
        try:
            if self.mirror or source.gdrive_id is None:
                http_download(where, dest, progress=self.progress)
            else:
                gdrive_download(source.gdrive_id, dest, progress=self.progress)
        except DownloadError:
            raise
        except Exception as exc:  # network errors of every kind
            hint = (
                f"Without internet here, download {source.url} on another machine and pass "
                f"--archives DIR (a folder holding {source.filename}) or --mirror URL."
            )
            raise DownloadError(f"cannot download {where}: {type(exc).__name__}: {exc}\n{hint}") from exc
        return dest, True

    def install(self, name: str) -> Path:
        """Install data set ``name`` into ``data_dir``; return its folder. Does nothing when it is
        already installed."""
        if name not in DOWNLOADABLE:
            raise DownloadError(f"unknown dataset {name!r}; valid choices: {', '.join(DOWNLOADABLE)}")
        cls = DOWNLOADABLE[name]
        recipe = self.recipes[name]
        dest = self.data_dir / cls.FOLDER
        if (dest / MARKER).is_file() and not self.force:
            self.log(f"{name}: already installed in {dest}")
            return dest
        if dest.exists() and not self.force:
            counts = count_samples(cls, dest)
            if counts is not None and matching_version(cls, counts) is not None:
                self.log(f"{name}: {dest} already holds the complete data set; recording it")
                write_marker(dest, name, counts, {})
                return dest
            raise DownloadError(
                f"{dest} exists but is not a complete {name} (see `sage-bench data check {name} "
                f"--data-dir {self.data_dir}`); pass --force to replace it"
            )

        self.log(f"{name}: installing into {dest}")
        staging = self.work_dir / name
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        fetched: list[tuple[Source, Path, bool]] = []
        for source in recipe.sources:
            path, downloaded = self.fetch(source)
            try:
                verify_file(path, source)
            except DownloadError as exc:
                if downloaded:
                    path.unlink()
                    raise DownloadError(f"{exc}. The download was deleted; run the command again.") from exc
                raise DownloadError(f"{exc}. Replace that file and run the command again.") from exc
            fetched.append((source, path, downloaded))

        files: dict[str, Path] = {}
        for source, path, _ in fetched:
            if source.extract:
                self.log(f"  extracting {source.filename}")
                extract(path, staging)
            else:
                files[source.filename] = path
        root = recipe.arrange(cls, staging, files)

        counts = count_samples(cls, root)
        version = matching_version(cls, counts) if counts is not None else None
        if version is None and not self.check_counts:
            version = "counts match no published version"
            self.log(f"{name}: warning: {sum((counts or {}).values())} images, which matches no published count")
        if version is None:
            expected = sum(cls.EXPECTED_IMAGES.values())
            got = sum(counts.values()) if counts else 0
            raise DownloadError(
                f"{name}: the archives gave {got} images ({counts}), expected {expected} "
                f"({cls.EXPECTED_IMAGES}); the extracted files are left in {staging} for inspection. "
                "If the archives are right but the publisher changed them, --no-count-check installs anyway"
            )
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(root, dest)
        digests = {source.filename: sha256sum(path) for source, path, _ in fetched}
        write_marker(dest, name, counts, digests, version)
        if staging.exists():  # what the arrangement left over
            shutil.rmtree(staging)
        if not self.keep_archives:
            for _, path, downloaded in fetched:
                if downloaded:
                    path.unlink()
        self.log(f"{name}: {sum(counts.values())} images in {dest} ({version})")
        return dest


def count_images(cls: type[MultiEnvironmentImageFolder], root: Path) -> dict[str, int] | None:
    """Images per environment folder under ``root`` (``None`` if an environment is missing)."""
    if not all((root / env).is_dir() for env in cls.ENV_FOLDERS):
        return None
    counts = {}
    for env in cls.ENV_FOLDERS:
        classes = {c: i for i, c in enumerate(list_folders(root / env))}
        counts[env] = len(find_images(root / env, classes))
    return counts


def count_samples(cls, root: Path) -> dict[str, int] | None:
    """What ``cls``'s published counts count under ``root``: images per environment folder, or
    for the multi-task sets samples per split (``None`` if a folder is missing)."""
    if issubclass(cls, NpyMultiTaskDataset):
        return cls.count(root)
    return count_images(cls, root)


def matching_version(cls, counts: dict[str, int]) -> str | None:
    """Which published version ``counts`` match, per environment or in total:
    ``"published counts"``, the name of an alternative version, or ``None``."""
    versions = {"published counts": cls.EXPECTED_IMAGES, **cls.ALTERNATIVE_IMAGES}
    for version, expected in versions.items():
        if counts == expected:
            return version
    for version, expected in versions.items():
        if sum(counts.values()) == sum(expected.values()):
            return f"{version} (total; per-environment counts differ)"
    return None


def write_marker(dest: Path, name: str, counts: dict[str, int], digests: dict[str, str], version: str = "") -> None:
    from sage_bench import __version__

    record = {
        "dataset": name,
        "images": counts,
        "version": version or matching_version(DOWNLOADABLE[name], counts),
        "sources_sha256": digests,
        "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sage_bench": __version__,
    }
    (dest / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def install(names: Iterable[str], data_dir: str | os.PathLike, **options) -> list[Path]:
    """Install each data set in ``names`` (or a group: ``all``, ``domainbed`` for DomainBed's
    five, ``mtl`` for NYUv2 and Cityscapes) into ``data_dir``."""
    installer = Installer(Path(data_dir), **options)
    return [installer.install(name) for name in expand_names(names)]


__all__ = ["DOWNLOADABLE", "GROUPS", "RECIPES", "DownloadError", "Installer", "Recipe", "Source", "expand_names", "install"]
