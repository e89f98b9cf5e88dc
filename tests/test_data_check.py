"""``sage-bench data check`` on good and broken trees."""

from __future__ import annotations

import pytest

from sage_bench.cli import main
from sage_bench.data import PACS, TerraIncognita
from sage_bench.data.check import check_dataset, format_report
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree, write_image


@pytest.fixture
def pacs(tmp_path, monkeypatch):
    counts = make_tree(tmp_path / "PACS", PACS_ENVS, PACS_CLASSES, per_class=1)
    monkeypatch.setattr(PACS, "EXPECTED_IMAGES", counts)
    return tmp_path


def test_good_tree(pacs, capsys):
    report = check_dataset("PACS", pacs)
    assert report.usable and not report.warnings and report.total == 28
    assert [(e.label, e.folder, e.classes, e.images) for e in report.environments] == [
        (label, env, 7, 7) for label, env in zip("ACPS", PACS_ENVS, strict=True)
    ]
    assert main(["data", "check", "PACS", "--data-dir", str(pacs)]) == 0
    out = capsys.readouterr().out
    assert "art_painting" in out and "usable" in out and "NOT USABLE" not in out


def test_missing_folder_and_unreadable_images(pacs, capsys):
    for f in (pacs / "PACS" / "sketch").rglob("*.jpg"):
        f.unlink()
    bad = pacs / "PACS" / "photo" / "dog" / "0.jpg"
    bad.write_bytes(b"\x00" * 100)
    truncated = pacs / "PACS" / "cartoon" / "dog" / "0.jpg"
    write_image(truncated, seed=5, size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:-300])
    report = check_dataset("PACS", pacs)
    assert not report.usable
    assert [p for p, _ in report.unreadable] == [str(bad)]
    assert report.truncated == [str(truncated)]
    assert any("holds no images" in p and "sketch" in p for p in report.problems)
    assert main(["data", "check", "PACS", "--data-dir", str(pacs), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert f"unreadable: {bad}" in out and f"truncated: {truncated}" in out and "NOT USABLE" in out


def test_missing_environment_and_missing_dataset(pacs, capsys):
    (pacs / "PACS" / "photo").rename(pacs / "PACS" / "photos")
    report = check_dataset("PACS", pacs, decode=False)
    assert any("missing environment folder" in p and "photo" in p for p in report.problems)
    assert any("unexpected folder" in p and "photos" in p for p in report.problems)
    assert main(["data", "check", "VLCS", "--data-dir", str(pacs)]) == 1
    assert f"sage-bench download VLCS --data-dir {pacs}" in capsys.readouterr().out


def test_count_differences_are_warnings(pacs, monkeypatch):
    monkeypatch.setattr(PACS, "EXPECTED_IMAGES", {**PACS.EXPECTED_IMAGES, "photo": 9})
    report = check_dataset("PACS", pacs, decode=False)
    assert report.usable
    assert any("photo 7 (expected 9)" in w for w in report.warnings)
    assert "<-" in format_report(report)


def test_terra_incognita_version_is_named_not_failed(tmp_path, monkeypatch):
    counts = make_tree(tmp_path / "terra_incognita", TerraIncognita.ENV_FOLDERS, ["bird"], per_class=1)
    monkeypatch.setattr(TerraIncognita, "EXPECTED_IMAGES", {env: 2 for env in counts})
    monkeypatch.setattr(TerraIncognita, "ALTERNATIVE_IMAGES", {"current archive (4 images)": counts})
    report = check_dataset("TerraIncognita", tmp_path, decode=False)
    assert report.usable
    assert any("current archive (4 images) version" in w and "8 of the DomainBed paper" in w for w in report.warnings)


def test_unknown_name(tmp_path, capsys):
    assert main(["data", "check", "Nope", "--data-dir", str(tmp_path)]) == 2
    assert "unknown dataset(s) 'Nope'" in capsys.readouterr().err


def test_symbolic_links_that_loop_or_leave_the_data_set_are_not_followed(pacs, tmp_path, capsys):
    """A link back to a folder it lies in would read the images again and again (35 became 235
    in both splits); one out of the data set's folder reads what is not the data set. Neither is
    followed, in training or in `data check`, which names them; a link to a folder of the data
    set that is not read otherwise is followed, as ImageFolder follows it."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from sage_bench.data.images import scan_images

    dog = pacs / "PACS" / "photo" / "dog"
    outside = tmp_path / "elsewhere"
    write_image(outside / "x.jpg", seed=9)
    write_image(dog / "sub" / "1.jpg", seed=10)
    links = {
        "loop": "..",  # the environment folder: every class again, forever
        "self": ".",
        "again": "sub",  # a folder already read
        "out": str(outside),
        "out.jpg": str(outside / "x.jpg"),
        "broken.jpg": "nowhere.jpg",
    }
    for name, target in links.items():
        (dog / name).symlink_to(target)
    (dog / "cartoon_dogs").symlink_to(pacs / "PACS" / "cartoon" / "dog")  # inside the data set: followed
    (pacs / "PACS" / "photo" / "elephant" / "ok.jpg").symlink_to(pacs / "PACS" / "photo" / "dog" / "0.jpg")

    report = check_dataset("PACS", pacs, decode=False)
    photo = next(e for e in report.environments if e.folder == "photo")
    assert photo.images == 7 + 1 + 1 + 1  # sub/1.jpg, cartoon_dogs/0.jpg, elephant/ok.jpg
    skipped = dict(report.skipped_links)
    assert set(skipped) == {str(dog / name) for name in links}
    assert skipped[str(dog / "loop")].startswith("loops back to")
    assert skipped[str(dog / "self")].startswith("loops back to")
    assert skipped[str(dog / "again")].startswith("leads to") and "already read" in skipped[str(dog / "again")]
    assert "out of the data set's folder" in skipped[str(dog / "out")] and "out of" in skipped[str(dog / "out.jpg")]
    assert skipped[str(dog / "broken.jpg")] == "broken link"
    assert report.usable and any("symbolic link(s) not followed" in w for w in report.warnings)
    assert main(["data", "check", "PACS", "--data-dir", str(pacs), "--no-decode"]) == 0
    assert f"link not followed: {dog / 'loop'} (loops back to" in capsys.readouterr().out

    with pytest.warns(UserWarning, match="6 symbolic link"):
        dataset = PACS(pacs, test_envs=[0])
    assert len(dataset.datasets[2]) == 10

    # without problem links, the same images in the same order as torchvision's ImageFolder
    for name in links:
        (dog / name).unlink()
    classes = {c: i for i, c in enumerate(PACS_CLASSES)}
    env = pacs / "PACS" / "photo"
    assert scan_images(env, classes).samples == make_dataset(str(env), classes, extensions=IMG_EXTENSIONS)
