"""The evaluation cache is checked where it is read, and its builds fail clearly and cleanly:
damage anywhere stops a job, one builder at a time, read-only and full disks (real tmpfs
mounts) give exit 2 with what to do and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sage_bench.cli import main
from sage_bench.data import eval_cache as ec
from tests.test_eval_cache import SIZE, _cache, _pacs, _train, _tree

ROOT = Path(__file__).resolve().parents[1]


def _sampled(size: int) -> np.ndarray:
    """A boolean mask of the bytes of a file of ``size`` bytes that the sampled digest reads."""
    mask = np.zeros(size, dtype=bool)
    for offset in np.linspace(0, max(size - ec._BLOCK, 0), ec._SAMPLE_BLOCKS).astype(np.int64):
        mask[offset : offset + ec._BLOCK] = True
    return mask


def _damage_outside_the_samples(file: Path, image: int) -> None:
    """Zero every byte of image ``image`` that the sampled digest does not read."""
    data = np.fromfile(file, dtype=np.uint8)
    start, stop = image * 3 * SIZE * SIZE, (image + 1) * 3 * SIZE * SIZE
    keep = _sampled(len(data))
    region = np.arange(start, stop)
    data[region[~keep[region]]] = 0
    data.tofile(file)


def test_an_image_damaged_outside_the_sampled_blocks_stops_the_job_with_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ec, "_BLOCK", 64)  # samples cover a small part of these small files, as of a large cache
    _tree(tmp_path)
    _cache(tmp_path)
    path = ec.cache_path(tmp_path, "PACS", SIZE)
    _damage_outside_the_samples(path / "env1.u8", image=3)
    cache, why = ec.open_cache(_pacs(tmp_path), SIZE)
    assert cache is not None, why  # the quick check at opening cannot see it ...
    capsys.readouterr()
    code, _, _ = _train(tmp_path, "damaged", "steps=1", "dataset.eval_cache=auto")
    err = capsys.readouterr().err
    assert code == 2  # ... but the job stops, never records an accuracy from it
    assert f"the evaluation cache at {path} is damaged: image 3 of env1.u8" in err
    assert f"sage-bench data cache PACS --data-dir {tmp_path} --image-size {SIZE} --force" in err
    # --verify finds it too, and a rebuild gives a cache the job uses
    assert main(["data", "cache", "PACS", "--data-dir", str(tmp_path), "--image-size", str(SIZE), "--verify",
                 "--workers", "1"]) == 0  # fmt: skip
    assert "rebuilding: the cache at" in capsys.readouterr().out  # env1.u8 does not match its digest
    assert ec.open_cache(_pacs(tmp_path), SIZE, full_check=True)[0] is not None
    code, _, records = _train(tmp_path, "rebuilt", "steps=1", "dataset.eval_cache=require")
    assert code == 0 and len(records) == 1


def test_every_image_read_is_checked_and_the_checksums_are_those_of_the_pixels(tmp_path):
    _tree(tmp_path)
    _cache(tmp_path)
    cache, _ = ec.open_cache(_pacs(tmp_path), SIZE)
    pixels = cache.pixels(2)
    assert [ec.image_checksum(p) for p in pixels] == cache.checksums(2).tolist()
    split = cache.split(2, np.zeros(len(pixels), dtype=np.int64), range(len(pixels)), rebuild="REBUILD")
    assert split[[0, 1]][0].shape == (2, 3, SIZE, SIZE)
    sums = cache.checksums(2)
    sums[1] ^= 1  # as if image 1's bytes had changed
    split.check = ec.ImageCheck(sums, split.check.file, split.check.rebuild)
    assert split[[0]][0].shape == (1, 3, SIZE, SIZE)  # the others still read
    with pytest.raises(ec.DamagedCacheError, match="image 1 of env2.u8.*\n    REBUILD"):
        split[[0, 1]]


def test_a_cache_without_checksums_or_missing_an_environment_is_stale_and_rebuilt(tmp_path, capsys):
    _tree(tmp_path)
    _cache(tmp_path)
    path = ec.cache_path(tmp_path, "PACS", SIZE)
    manifest = json.loads((path / "manifest.json").read_text())

    # a manifest that lost an environment: stale, and a job testing on that environment runs
    cut = {**manifest, "environments": manifest["environments"][:3]}
    (path / "manifest.json").write_text(json.dumps(cut))
    assert "does not describe every environment" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    code, _, records = _train(tmp_path, "cut", "steps=1", "test_envs=[3]")
    assert code == 0 and 0 <= records[0]["env3_in_acc"] <= 1

    # a cache of the format before checksums: stale (never used unchecked), rebuilt
    old = {**manifest, "key": {**manifest["key"], "format": 1}}
    (path / "manifest.json").write_text(json.dumps(old))
    for i in range(4):
        (path / f"env{i}.xxh3").unlink()
    assert "stale: format is 1" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    capsys.readouterr()
    _cache(tmp_path)
    assert "rebuilding: the cache at" in capsys.readouterr().out
    assert ec.open_cache(_pacs(tmp_path), SIZE, full_check=True)[0] is not None


# -- builds: two processes, read-only and full disks -------------------------------------------

_SLOW_BUILD = """
import os, sys, time
import sage_bench.data.eval_cache as ec
decode = ec._decode_chunk
def slow(*args):
    # a build that lasts until the test says "go" (a larger data set): another starts meanwhile
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["GO_FILE"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return decode(*args)
ec._decode_chunk = slow
from sage_bench.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

_PLENTY_OF_SPACE = """
import sys
import sage_bench.data.eval_cache as ec
ec.free_bytes = lambda path: 1 << 40  # the space was there when checked, and taken while building
from sage_bench.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _sage_bench(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment)  # fmt: skip


def _cache_args(data_dir: Path, *extra: str) -> list[str]:
    return ["data", "cache", "PACS", "--data-dir", str(data_dir), "--image-size", str(SIZE), "--workers", "1", *extra]


@pytest.mark.slow
def test_two_builds_of_one_cache_run_one_after_the_other(tmp_path):
    _tree(tmp_path)
    folder = ec.cache_path(tmp_path, "PACS", SIZE).parent
    go = {"GO_FILE": str(tmp_path / "go")}
    first = _sage_bench(_SLOW_BUILD, *_cache_args(tmp_path, "--force"), env=go)
    deadline = time.monotonic() + 60
    while not list(folder.glob(f"{SIZE}px.partial-*")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert list(folder.glob(f"{SIZE}px.partial-*")), "the first build did not start"
    second = _sage_bench(_SLOW_BUILD, *_cache_args(tmp_path, "--force"), env=go)
    said = []
    while (line := second.stdout.readline()) and "waiting" not in line:  # until it waits, or ends
        said.append(line)
    said.append(line)
    (tmp_path / "go").touch()
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert f"PACS: pid {first.pid} on" in line and "is building this cache; waiting for it to finish" in line, said
    assert sorted(p.name for p in folder.iterdir()) == [f"{SIZE}px"]  # no partial build, no lock file
    assert ec.open_cache(_pacs(tmp_path), SIZE, full_check=True)[0] is not None


@pytest.fixture
def tmpfs(tmp_path):
    """A function mounting a small tmpfs at a fresh folder (root only); unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_cache_folder_is_a_clear_error(tmp_path, tmpfs, capsys, monkeypatch):
    _tree(tmp_path / "data")
    cache_dir = tmpfs("2m")
    subprocess.run(["mount", "-o", "remount,ro", str(cache_dir)], check=True)
    monkeypatch.setenv(ec.CACHE_DIR_VARIABLE, str(cache_dir))
    assert main(_cache_args(tmp_path / "data")) == 2
    err = capsys.readouterr().err
    assert f"cannot write the evaluation cache at {cache_dir / 'PACS' / f'{SIZE}px'}" in err
    assert "Read-only file system" in err and ec.CACHE_DIR_VARIABLE in err
    assert list(cache_dir.iterdir()) == []


@pytest.mark.slow
def test_a_disk_that_fills_up_during_the_build_is_a_clear_error_and_leaves_nothing(tmp_path, tmpfs):
    _tree(tmp_path / "data")
    cache_dir = tmpfs("2m")
    need = sum(len(env) for env in _pacs(tmp_path / "data").datasets) * 3 * SIZE * SIZE
    filler = cache_dir / "other-files"
    free = os.statvfs(cache_dir).f_bavail * os.statvfs(cache_dir).f_frsize
    filler.write_bytes(b"\1" * (free - need // 3))  # another program took the space
    build = _sage_bench(_PLENTY_OF_SPACE, *_cache_args(tmp_path / "data"), env={ec.CACHE_DIR_VARIABLE: str(cache_dir)})
    out, err = build.communicate(timeout=120)
    assert build.returncode == 2, (build.returncode, err)  # not a Bus error
    assert "the disk filled up" in err and "No space left on device" in err and "Traceback" not in err
    assert [p.name for p in (cache_dir / "PACS").iterdir()] == []  # no partial cache, no lock file
    filler.unlink()
    build = _sage_bench(_PLENTY_OF_SPACE, *_cache_args(tmp_path / "data"), env={ec.CACHE_DIR_VARIABLE: str(cache_dir)})
    assert build.wait(timeout=120) == 0
