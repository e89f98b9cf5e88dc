"""The evaluation cache: every image of a data set decoded once, as evaluation sees it.

Deterministic evaluation (DomainBed's resize to a square, then normalisation) decodes the same
JPEGs at every checkpoint, and decoding runs at ~100 images/s per CPU core while a GPU evaluates
thousands. ``sage-bench data cache NAME`` decodes every image once through the evaluation
resize (``sage_bench.data.transforms.eval_resize``) and stores the uint8 result, one
memory-mapped array of shape ``(images, 3, size, size)`` per environment; a job then reads the
pixels from it and normalises them on its device, which gives bit-identical inputs (the same
uint8 pixels, then ToTensor's ``/ 255`` and Normalize's ``(x - mean) / std`` in float32).

Layout: ``<cache root>/<Dataset>/<size>px/`` with ``env<i>.u8`` (raw bytes) and ``manifest.json``,
written last. The cache root is ``$SAGE_BENCH_CACHE_DIR`` when set, else
``<data_dir>/.sage-bench-cache``. The manifest's ``key`` says what the pixels depend on: the
resize (its ``repr``), whether truncated images are decoded, the Pillow and torchvision
versions, and per environment the number of images and a digest of its file list (paths
relative to the data set's folder, and labels). A job uses the cache only when the key equals
its own; a changed folder or transform makes it stale (a cache of an older ``FORMAT``, e.g. one
without checksums, is stale too: it is rebuilt, never used unchecked). A cache is built in a
temporary folder and renamed into place when complete, so a build that was killed is never used.

Integrity: each environment also has ``env<i>.xxh3``, the XXH3-64 checksum of every image's bytes
(little-endian uint64, one per image), written at build time. Every image a job reads is checked
against it as it is read (``CachedSplit``), so a damaged image stops the evaluation with the
cache's path and the command that rebuilds it, wherever the damage lies. Each image is hashed
right after it is copied out of the map, while it is in the CPU's cache (about 13 us for a
224-px image on a loaded 2-core machine; ``benchmarks/eval_input.py`` measures the check's cost
against reading without it). When a cache is opened, the file sizes (truncation)
and a digest of 64 blocks spread over each file (gross corruption) are checked first, and
``sage-bench data cache --verify`` checks the digest of every byte and every image's checksum.

Not covered, on purpose: an image replaced in place by another under the same name (the file
list is the same; rebuild with ``--force``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
import xxhash
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from torchvision.transforms.functional import normalize

from sage_bench.data.images import MultiEnvironmentImageFolder, UnreadableImageError, decode_image
from sage_bench.data.transforms import Preprocess, eval_resize
from sage_bench.errors import UserError

FORMAT = 2  # 2: with a checksum per image (``env<i>.xxh3``)
CACHE_DIR_VARIABLE = "SAGE_BENCH_CACHE_DIR"
MANIFEST = "manifest.json"
_SAMPLE_BLOCKS, _BLOCK = 64, 1 << 16
_CHUNK = 256  # images per decoding task
CHECKSUM_DTYPE = np.dtype("<u8")


def image_checksum(pixels: np.ndarray) -> int:
    """XXH3-64 of one image's bytes (C-contiguous uint8)."""
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(pixels))


class CacheError(UserError):
    """A cache that cannot be built or used."""


def cache_root(data_dir: str | os.PathLike) -> Path:
    """``$SAGE_BENCH_CACHE_DIR`` when set, else ``<data_dir>/.sage-bench-cache``."""
    return Path(os.environ.get(CACHE_DIR_VARIABLE) or Path(data_dir) / ".sage-bench-cache")


def cache_path(data_dir: str | os.PathLike, dataset: str, image_size: int) -> Path:
    return cache_root(data_dir) / dataset / f"{image_size}px"


def _relative_paths(dataset: MultiEnvironmentImageFolder, env: int) -> list[bytes]:
    prefix = os.fsencode(str(dataset.root)) + os.sep.encode()
    paths = dataset.datasets[env].paths
    if not all(p.startswith(prefix) for p in paths):  # not expected: every image lies under root
        raise CacheError(f"images of {dataset.name()} lie outside {dataset.root}")
    return [p[len(prefix) :] for p in paths]


def files_digest(dataset: MultiEnvironmentImageFolder, env: int) -> str:
    """SHA-256 of environment ``env``'s file list: relative paths and labels, in order."""
    h = hashlib.sha256()
    for path, label in zip(_relative_paths(dataset, env), dataset.datasets[env].targets, strict=True):
        h.update(path + b"\0" + str(int(label)).encode() + b"\n")
    return h.hexdigest()


def cache_key(dataset: MultiEnvironmentImageFolder, image_size: int) -> dict[str, Any]:
    """Everything the cached pixels depend on (see the module docstring)."""
    return {
        "format": FORMAT,
        "dataset": dataset.name(),
        "image_size": image_size,
        "resize": repr(eval_resize(Preprocess(image_size=image_size))),
        "load_truncated": dataset.load_truncated,
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__,
        "environments": [
            {"folder": folder, "images": len(dataset.datasets[i]), "files": files_digest(dataset, i)}
            for i, folder in enumerate(dataset.ENV_FOLDERS)
        ],
    }


def _env_bytes(images: int, image_size: int) -> int:
    return images * 3 * image_size * image_size


def required_bytes(dataset: MultiEnvironmentImageFolder, image_size: int) -> int:
    """Disk the cache of ``dataset`` at ``image_size`` pixels takes (the manifest aside)."""
    return sum(_env_bytes(len(env), image_size) for env in dataset.datasets)


def _digests(path: Path, full: bool, image_bytes: int = 0) -> tuple[str, str | None, np.ndarray | None]:
    """(digest of 64 blocks spread over the file, digest of every byte or ``None``, and with
    ``full`` and ``image_bytes`` the checksum of each image of that many bytes)."""
    size = path.stat().st_size
    sample = hashlib.sha256()
    with open(path, "rb") as f:
        for offset in np.linspace(0, max(size - _BLOCK, 0), _SAMPLE_BLOCKS).astype(np.int64):
            f.seek(int(offset))
            sample.update(f.read(_BLOCK))
        if not full:
            return sample.hexdigest(), None, None
        f.seek(0)
        whole = hashlib.sha256()
        checksums = []
        per_read = max(1, (1 << 24) // image_bytes) * image_bytes if image_bytes else 1 << 24
        while block := f.read(per_read):
            whole.update(block)
            if image_bytes:
                view = memoryview(block)
                checksums += [xxhash.xxh3_64_intdigest(view[i : i + image_bytes]) for i in range(0, len(block), image_bytes)]
    return sample.hexdigest(), whole.hexdigest(), np.array(checksums, dtype=CHECKSUM_DTYPE) if image_bytes else None


def _first_difference(found: dict, expected: dict) -> str:
    for key in expected:
        if key == "environments":
            continue
        if found.get(key) != expected[key]:
            return f"{key} is {found.get(key)!r}, this job needs {expected[key]!r}"
    for have, want in zip(found.get("environments", []), expected["environments"], strict=False):
        if have != want:
            what = "image count" if have.get("images") != want["images"] else "file list"
            return f"the {what} of environment {want['folder']} changed since the cache was made"
    return "its environments differ"


@dataclass
class EvalCache:
    """A complete, checked cache: per environment, the pixels and the images that were unreadable."""

    path: Path
    manifest: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.manifest["key"]["image_size"])

    def _images(self, env: int) -> int:
        return int(self.manifest["key"]["environments"][env]["images"])

    def pixels(self, env: int) -> np.memmap:
        """Environment ``env``'s images, ``(n, 3, size, size)`` uint8, read-only and memory-mapped."""
        n, size = self._images(env), self.image_size
        return np.memmap(self.path / f"env{env}.u8", dtype=np.uint8, mode="r", shape=(n, 3, size, size))

    def checksums(self, env: int) -> np.ndarray:
        """The checksum (``image_checksum``) of each image of ``env``, as written when the cache was built."""
        return np.fromfile(self.path / f"env{env}.xxh3", dtype=CHECKSUM_DTYPE)

    def unreadable(self, env: int) -> dict[int, str]:
        """Index -> why, for the images of ``env`` that could not be decoded (stored as zeros)."""
        return {int(i): why for i, why in self.manifest["environments"][env]["unreadable"].items()}

    def split(self, env: int, labels: np.ndarray, indices: Sequence[int], rebuild: str = "",
              verify: bool = True) -> CachedSplit:  # fmt: skip
        """The images ``indices`` of ``env``, each checked against its checksum as it is read;
        a damaged one raises ``DamagedCacheError`` saying to run ``rebuild``. (``verify=False``:
        unchecked, only to measure what the check costs.)"""
        check = ImageCheck(self.checksums(env), self.path / f"env{env}.u8", rebuild) if verify else None
        return CachedSplit(self.pixels(env), labels, indices, check)


def open_cache(dataset: MultiEnvironmentImageFolder, image_size: int, full_check: bool = False) -> tuple[EvalCache | None, str]:  # fmt: skip
    """The cache of ``dataset`` at ``image_size`` pixels when it is complete, intact and made for
    exactly this file list and transform; otherwise ``(None, why not)``. ``full_check`` reads
    every byte (the digest of each file and the checksum of each image)."""
    path = cache_path(dataset.data_dir, dataset.name(), image_size)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        what = "an incomplete one" if path.exists() else "none"
        return None, f"{what} at {path}"
    try:
        manifest = json.loads(manifest_path.read_text())
        found = manifest["key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"the cache at {path} has an unreadable manifest ({exc})"
    expected = cache_key(dataset, image_size)
    if found != expected:
        return None, f"the cache at {path} is stale: {_first_difference(found, expected)}"
    environments = manifest.get("environments")
    if not isinstance(environments, list) or len(environments) != len(expected["environments"]):
        return None, f"the cache at {path} is stale: its manifest does not describe every environment"
    image_bytes = 3 * image_size * image_size
    for i, entry in enumerate(environments):
        file = path / f"env{i}.u8"
        size = file.stat().st_size if file.exists() else -1
        if size != entry["bytes"]:
            return None, f"the cache at {path} is damaged: {file.name} has {size} bytes, not {entry['bytes']}"
        checksums = path / f"env{i}.xxh3"
        want = expected["environments"][i]["images"] * CHECKSUM_DTYPE.itemsize
        have = checksums.stat().st_size if checksums.exists() else -1
        if have != want:
            return None, f"the cache at {path} is damaged: {checksums.name} has {have} bytes, not {want}"
        sample, whole, per_image = _digests(file, full_check, image_bytes)
        if sample != entry["sample_sha256"] or (whole is not None and whole != entry["sha256"]):
            return None, f"the cache at {path} is damaged: {file.name} does not match its digest"
        if per_image is not None:
            bad = np.flatnonzero(per_image != np.fromfile(checksums, dtype=CHECKSUM_DTYPE))
            if len(bad):
                return None, f"the cache at {path} is damaged: {len(bad)} image(s) of {file.name} do not match their checksums"
    return EvalCache(path, manifest), ""


def rebuild_hint(dataset: MultiEnvironmentImageFolder, image_size: int) -> str:
    return f"sage-bench data cache {dataset.name()} --data-dir {dataset.data_dir} --image-size {image_size}"


class DamagedCacheError(CacheError):
    """An image of the cache that does not match the checksum written when it was built."""


# ---------------------------------------------------------------------------------------- build


def _decode_chunk(file: str, shape: tuple[int, ...], start: int, paths: Sequence[bytes], image_size: int,
                  load_truncated: bool) -> dict[int, str]:  # fmt: skip
    """Decode ``paths`` into rows ``start...`` of the array in ``file``; return the unreadable ones."""
    resize = eval_resize(Preprocess(image_size=image_size))
    pixels = np.memmap(file, dtype=np.uint8, mode="r+", shape=shape)
    unreadable = {}
    for offset, path in enumerate(paths):
        try:
            image = resize(decode_image(os.fsdecode(path), load_truncated))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            unreadable[start + offset] = str(exc)
            continue
        pixels[start + offset] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    pixels.flush()
    return unreadable


def free_bytes(path: Path) -> int:
    """Free disk space where ``path`` is (or would be created)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _write_error(exc: OSError, final: Path) -> CacheError | None:
    """A clear ``CacheError`` for a cache that cannot be written (read-only folder, full disk)."""
    where = exc.filename or final.parent
    if exc.errno in _READ_ONLY:
        return CacheError(
            f"cannot write the evaluation cache at {final}: {where} is not writable ({exc.strerror}); "
            f"make it writable, or set {CACHE_DIR_VARIABLE} to a writable folder (nothing was left behind)"
        )
    if exc.errno in _FULL:
        return CacheError(
            f"cannot write the evaluation cache at {final}: the disk filled up ({exc.strerror}) while writing "
            f"{where}; the partial cache was removed. Free some space or set {CACHE_DIR_VARIABLE} to a larger disk"
        )
    return None


def _allocate(file: Path, size: int) -> None:
    """Create ``file`` with ``size`` bytes reserved on the disk: a full disk is then an
    ``OSError`` here, not a ``SIGBUS`` when a memory-mapped page is written later."""
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        exc.filename = exc.filename or str(file)
        raise
    finally:
        os.close(fd)


def build_cache(dataset: MultiEnvironmentImageFolder, image_size: int, workers: int = 1,
                progress: Callable[[int], None] | None = None, waiting: Callable[[str], None] | None = None,
                force: bool = True) -> EvalCache:  # fmt: skip
    """Decode every image of ``dataset`` into a new cache at ``image_size`` pixels, replacing
    any previous one at that place once the new one is complete. ``progress(n)`` is called as
    ``n`` more images are done.

    One build per cache at a time: a second waits for the first (``waiting(who)`` is called
    first, naming the process that builds), then uses the cache it made unless ``force``. Raises ``CacheError`` when the disk is too small or
    fills up, or the folder is not writable; nothing partial is left behind."""
    from sage_bench.lock import JobAlreadyRunning, holder, job_lock

    final = cache_path(dataset.data_dir, dataset.name(), image_size)
    lock_name = f"{final.name}.lock"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with job_lock(final.parent, wait_s=0, name=lock_name) as lock:
                lock.remove_on_release = True
                return _build_locked(dataset, image_size, final, workers, progress)
        except JobAlreadyRunning:
            if waiting:
                waiting(holder(final.parent, lock_name))
            with job_lock(final.parent, wait_s=float("inf"), name=lock_name) as lock:
                lock.remove_on_release = True
                built, _ = open_cache(dataset, image_size)
                if built is not None and not force:
                    return built
                return _build_locked(dataset, image_size, final, workers, progress)
    except OSError as exc:
        error = _write_error(exc, final)
        if error is None:
            raise
        raise error from exc


def _build_locked(dataset: MultiEnvironmentImageFolder, image_size: int, final: Path, workers: int,
                  progress: Callable[[int], None] | None) -> EvalCache:  # fmt: skip
    from sage_bench.units import format_bytes as format_size

    need = required_bytes(dataset, image_size)
    free = free_bytes(final.parent)
    if need * 1.01 > free:
        raise CacheError(
            f"the {dataset.name()} cache at {image_size} px needs {format_size(need)}, but {final.parent} "
            f"has {format_size(free)} free; free some space or set {CACHE_DIR_VARIABLE} to a larger disk"
        )
    for leftover in [*final.parent.glob(f"{final.name}.partial-*"), *final.parent.glob(f"{final.name}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)  # from a build that was killed (builds hold the lock)
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    try:
        partial.mkdir()
        key = cache_key(dataset, image_size)
        tasks = []
        for i, env in enumerate(dataset.datasets):
            shape = (len(env), 3, image_size, image_size)
            _allocate(partial / f"env{i}.u8", _env_bytes(len(env), image_size))
            for start in range(0, len(env), _CHUNK):
                paths = list(env.paths[start : start + _CHUNK])
                tasks.append((i, (str(partial / f"env{i}.u8"), shape, start, paths, image_size, dataset.load_truncated)))
        unreadable: list[dict[int, str]] = [{} for _ in dataset.datasets]
        if workers <= 1:
            results = ((i, _decode_chunk(*args)) for i, args in tasks)
            for (i, args), (_, bad) in zip(tasks, results, strict=True):
                unreadable[i].update(bad)
                if progress:
                    progress(len(args[3]))
        else:
            with ProcessPoolExecutor(workers) as pool:
                futures = [(i, len(args[3]), pool.submit(_decode_chunk, *args)) for i, args in tasks]
                for i, n, future in futures:
                    unreadable[i].update(future.result())
                    if progress:
                        progress(n)
        environments = []
        for i in range(len(dataset.datasets)):
            file = partial / f"env{i}.u8"
            sample, whole, checksums = _digests(file, full=True, image_bytes=3 * image_size * image_size)
            with open(partial / f"env{i}.xxh3", "wb") as f:
                f.write(checksums.tobytes())
            environments.append({
                "bytes": file.stat().st_size, "sample_sha256": sample, "sha256": whole,
                "unreadable": {str(k): v for k, v in sorted(unreadable[i].items())},
            })  # fmt: skip
        manifest = {"key": key, "environments": environments, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return EvalCache(final, manifest)


# ------------------------------------------------------------------------------------------ use


@dataclass
class ImageCheck:
    """The checksums an environment's images are checked against as they are read, and what
    to say when one does not match."""

    checksums: np.ndarray
    file: Path
    rebuild: str  # the command that rebuilds the cache

    def __post_init__(self) -> None:
        self._expected = self.checksums.tolist()  # Python ints: compared without NumPy scalars

    def __call__(self, row: int, image: np.ndarray) -> None:
        """Raise ``DamagedCacheError`` unless ``image`` (row ``row``) has its checksum."""
        if xxhash.xxh3_64_intdigest(image) != self._expected[row]:
            raise DamagedCacheError(
                f"the evaluation cache at {self.file.parent} is damaged: image {int(row)} of {self.file.name} "
                "does not match the checksum written when the cache was built, so this evaluation "
                f"stopped rather than report a wrong accuracy. Rebuild the cache with\n    {self.rebuild}\n"
                "then run the job again (it resumes from its last checkpoint), or run it with "
                "dataset.eval_cache=off"
            )


class CachedSplit(Dataset):
    """Some images of one environment from the cache: ``split[[p, q, ...]]`` is a batch
    ``(uint8 pixels (B, 3, size, size), labels (B,))`` of the split's positions ``p, q, ...``,
    each image checked by ``check`` (``EvalCache.split``) as it is read."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: Sequence[int], check: ImageCheck | None = None):
        self.pixels = pixels
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.check = check

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[positions]
        if self.check is None:
            pixels = self.pixels[rows]
        else:  # each image checked right after it is copied, while it is in the CPU's cache
            source = self.pixels.view(np.ndarray)  # the mapped bytes, without np.memmap's per-row overhead
            pixels = np.empty((len(rows), *source.shape[1:]), dtype=np.uint8)
            for k, row in enumerate(rows.tolist()):
                pixels[k] = source[row]
                self.check(row, pixels[k])
        return torch.from_numpy(pixels), torch.from_numpy(self.labels[rows])


def readable_indices(indices: Sequence[int], unreadable: dict[int, str], n: int, on_unreadable: str,
                     describe: Callable[[int, str], UnreadableImageError]) -> list[int]:  # fmt: skip
    """``indices`` with each unreadable image replaced as ``ImageFolderEnvironment`` replaces it:
    by the next readable image of the environment (``on_unreadable="skip"``), or an error."""
    if not unreadable:
        return list(indices)
    out = []
    for index in indices:
        position = index
        while position in unreadable:
            if on_unreadable == "error":
                raise describe(position, unreadable[position])
            position = (position + 1) % n
            if position == index:
                raise UserError("no readable image in an environment of the evaluation cache")
        out.append(position)
    return out


class DeviceNormalized:
    """Batches of a loader of uint8 pixels, moved to ``device`` and normalised there exactly as
    ``ToTensor`` + ``Normalize`` do on the CPU (``x / 255``, then ``(x - mean) / std``, float32)."""

    def __init__(self, loader: DataLoader, preprocess: Preprocess, device: torch.device):
        self.loader, self.preprocess, self.device = loader, preprocess, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        pin = self.loader.pin_memory
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=pin).to(torch.get_default_dtype()).div(255)
            yield normalize(x, self.preprocess.mean, self.preprocess.std, inplace=True), y


def cached_loader(split: CachedSplit, preprocess: Preprocess, batch_size: int, device: torch.device,
                  pin_memory: bool = False) -> DeviceNormalized:  # fmt: skip
    """The split's batches in order, as ``eval_loader`` gives them, normalised on ``device``.

    A ``DataLoader`` in this process (reading a memory map needs no workers); like every
    evaluation loader it draws its base seed from the global generator when iterated, so a job's
    random stream is the same with and without the cache."""
    sampler = BatchSampler(SequentialSampler(range(len(split))), batch_size, drop_last=False)
    loader = DataLoader(split, batch_size=None, sampler=sampler, num_workers=0, pin_memory=pin_memory)
    return DeviceNormalized(loader, preprocess, device)
