import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mlkit.data import ClassDataset, Omniglot, omniglot

# A small fake Omniglot in the real layout: background has alphabets Alpha and Beta with 3 characters each,
# evaluation has Gamma with 2. Character k (0..7, in load order) is a black rectangle in cell k of a 3x3 grid
# of 35x35-pixel cells; drawing j (0..19) makes it 8 + j pixels tall, so ink grows with the drawing index.
LAYOUT = {"images_background": {"Alpha": 3, "Beta": 3}, "images_evaluation": {"Gamma": 2}}
DRAWINGS = 20
CLASSES = [f"{archive}/{alphabet}/character{c:02d}"
           for archive, alphabets in LAYOUT.items() for alphabet, n in alphabets.items() for c in range(1, n + 1)]


def drawing(k, j, flip=False):
    image = Image.new("1", (105, 105), 1)  # the real PNGs: mode "1", white background, black strokes
    row, col = divmod(8 - k if flip else k, 3)
    ImageDraw.Draw(image).rectangle([col * 35 + 5, row * 35 + 5, col * 35 + 29, row * 35 + 12 + j], fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def members(archive, flip=False):
    """{zip member name: PNG bytes} of one fake archive."""
    k0 = 0 if archive == "images_background" else 6
    files, k = {}, k0
    for alphabet, n in LAYOUT[archive].items():
        for c in range(1, n + 1):
            for j in range(DRAWINGS):
                files[f"{archive}/{alphabet}/character{c:02d}/{1000 + k:04d}_{j + 1:02d}.png"] = drawing(k, j, flip)
            k += 1
    return files


def write_zip(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_root(root, zipped=True, flip=False):
    """A root holding both fake archives, as zips or as extracted folders."""
    root.mkdir(parents=True, exist_ok=True)
    for archive in LAYOUT:
        files = members(archive, flip)
        if zipped:
            write_zip(root / f"{archive}.zip", files)
        else:
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
    return root


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in Path(folder).rglob("*")}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test caches into its own folder, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MLKIT_CACHE", str(folder))
    return folder


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the PNG decoder."""
    calls = []
    real = omniglot._decode

    def counting(data, image_size):
        calls.append(1)
        return real(data, image_size)

    monkeypatch.setattr(omniglot, "_decode", counting)
    return calls


def cell_of(image):
    """The 3x3-grid cell with the most ink in a [1, S, S] image."""
    size = image.shape[-1]
    edges = [round(i * size / 3) for i in range(4)]
    ink = [image[0, edges[r]:edges[r + 1], edges[c]:edges[c + 1]].float().sum() for r in range(3) for c in range(3)]
    return int(torch.stack(ink).argmax())


def test_loads_fake_archives(tmp_path, cache):
    root = make_root(tmp_path / "root")
    before = snapshot(root)
    data = Omniglot(root, progress=False)
    assert data.classes == CLASSES and data.num_classes == 8
    assert data.alphabets == ["Alpha"] * 3 + ["Beta"] * 3 + ["Gamma"] * 2
    assert data.images.shape == (8 * DRAWINGS, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.counts.tolist() == [DRAWINGS] * 8
    # Inverted: background 0, strokes 255; every image's ink sits in its own character's cell.
    assert data.images[:, :, 0, 0].eq(0).all() and data.images.amax(dim=(1, 2, 3)).eq(255).all()
    assert [cell_of(image) for image in data.images] == data.labels.tolist()
    # Drawings in file order: drawing j of a character has more ink than drawing j - 1.
    ink = data.images.float().sum(dim=(1, 2, 3))[data.members]
    assert (ink[:, 1:] > ink[:, :-1]).all()
    assert snapshot(root) == before  # root is only read
    assert [p.name for p in cache.iterdir()][0].startswith("omniglot-28px-") and len(list(cache.iterdir())) == 1


def test_second_load_comes_from_cache(tmp_path, decodes):
    root = make_root(tmp_path / "root")
    first = Omniglot(root, progress=False)
    assert len(decodes) == 8 * DRAWINGS
    decodes.clear()
    second = Omniglot(root, progress=False)
    assert not decodes
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert (first.classes, first.alphabets) == (second.classes, second.alphabets)
    small = Omniglot(root, image_size=14, progress=False)  # another size: decoded again, cached apart
    assert len(decodes) == 8 * DRAWINGS and small.images.shape[-2:] == (14, 14)


def test_changed_archive_is_not_served_from_a_stale_cache(tmp_path):
    root = make_root(tmp_path / "root")
    Omniglot(root, progress=False)
    # Same names and byte size, different content: Gamma's two characters swap their drawings.
    path, files = root / "images_evaluation.zip", members("images_evaluation")
    size = path.stat().st_size
    names = sorted(files)  # character01's 20 drawings, then character02's
    write_zip(path, dict(zip(names, [files[name] for name in names[DRAWINGS:] + names[:DRAWINGS]])))
    assert path.stat().st_size == size
    swapped = Omniglot(root, progress=False)
    assert [cell_of(image) for image in swapped.images[swapped.labels >= 6]] == [7] * DRAWINGS + [6] * DRAWINGS


def test_extracted_folders_load_like_zips(tmp_path):
    zipped = Omniglot(make_root(tmp_path / "zipped"), progress=False)
    folders = make_root(tmp_path / "folders", zipped=False)
    extracted = Omniglot(folders, progress=False)
    assert torch.equal(zipped.images, extracted.images) and torch.equal(zipped.labels, extracted.labels)
    assert (zipped.classes, zipped.alphabets) == (extracted.classes, extracted.alphabets)
    # Both there: the zip wins.
    make_root(folders, flip=True)
    both = Omniglot(folders, progress=False)
    assert [cell_of(image) for image in both.images] == (8 - both.labels).tolist()


def test_default_root_and_cache_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLKIT_DATA", str(tmp_path / "data"))
    assert omniglot.default_root() == tmp_path / "data" / "omniglot"
    make_root(tmp_path / "data" / "omniglot")
    assert Omniglot(progress=False).classes == CLASSES
    monkeypatch.delenv("MLKIT_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert omniglot.default_root() == tmp_path / "xdg" / "mlkit" / "omniglot"
    monkeypatch.delenv("MLKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    assert omniglot.cache_dir() == tmp_path / "xdg-cache" / "mlkit"


def test_missing_dataset_says_where_and_how(tmp_path, decodes):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        Omniglot(root, progress=False)
    message = str(error.value)
    assert str(root) in message and "images_background.zip" in message and "images_evaluation.zip" in message
    assert "download=True" in message and omniglot.RELEASE["images_background.zip"][0] in message
    assert not root.exists() and not decodes
    make_root(root)
    (root / "images_evaluation.zip").unlink()
    with pytest.raises(FileNotFoundError, match="images_evaluation.zip missing"):
        Omniglot(root, progress=False)


@pytest.mark.parametrize("image_size", [0, -28, 2.5, True, "28", None])
def test_image_size_must_be_a_positive_int(tmp_path, image_size):
    with pytest.raises(ValueError, match="image_size"):
        Omniglot(tmp_path / "nowhere", image_size=image_size)


@pytest.mark.parametrize("corruption, match", [
    ("garbage", "not a valid zip"),
    ("truncated", "not a valid zip"),
    ("bad_png", "cannot decode"),
    ("layout", "layout"),
    ("empty", "no PNGs"),
])
def test_corrupt_archive_raises_and_does_not_poison_the_next_load(tmp_path, cache, corruption, match):
    root = make_root(tmp_path / "root")
    path = root / "images_evaluation.zip"
    files = members("images_evaluation")
    if corruption == "garbage":
        path.write_bytes(b"this is not a zip file" * 100)
    elif corruption == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif corruption == "bad_png":
        name = sorted(files)[7]
        write_zip(path, {**files, name: files[name][:40]})
    elif corruption == "layout":
        write_zip(path, {**files, "images_evaluation/Gamma/stray.png": drawing(0, 0)})
    else:
        write_zip(path, {"images_evaluation/readme.txt": b"no drawings"})
    with pytest.raises(ValueError, match=match):
        Omniglot(root, progress=False)
    assert not cache.exists() or not list(cache.iterdir())
    make_root(root)  # the good archive in the same root
    assert Omniglot(root, progress=False).classes == CLASSES


@pytest.fixture
def server(tmp_path, serve_folder):
    """A local HTTP server on 127.0.0.1 serving the good fake archives; yields its base URL."""
    folder = make_root(tmp_path / "served")
    with serve_folder(folder) as base:
        yield base, folder



def point_release_at(monkeypatch, base, folder, wrong_md5=()):
    for name in omniglot.RELEASE:
        md5 = "0" * 32 if name in wrong_md5 else hashlib.md5((folder / name).read_bytes()).hexdigest()
        monkeypatch.setitem(omniglot.RELEASE, name, (base + name, md5))


def test_download_fetches_verifies_and_loads(tmp_path, monkeypatch, server):
    base, folder = server
    point_release_at(monkeypatch, base, folder)
    root = tmp_path / "new" / "root"
    data = Omniglot(root, download=True, progress=False)
    assert data.classes == CLASSES
    assert sorted(p.name for p in root.iterdir()) == ["images_background.zip", "images_evaluation.zip"]
    assert (root / "images_background.zip").read_bytes() == (folder / "images_background.zip").read_bytes()
    # Archives already there: nothing is fetched (this URL would fail).
    point_release_at(monkeypatch, "http://127.0.0.1:9/", folder)
    assert Omniglot(root, download=True, progress=False).classes == CLASSES


def test_download_with_wrong_checksum_leaves_nothing_behind(tmp_path, monkeypatch, cache, server):
    base, folder = server
    point_release_at(monkeypatch, base, folder, wrong_md5=["images_background.zip"])
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="md5"):
        Omniglot(root, download=True, progress=False)
    assert not list(root.iterdir()) and (not cache.exists() or not list(cache.iterdir()))
    point_release_at(monkeypatch, base, folder)
    assert Omniglot(root, download=True, progress=False).classes == CLASSES


def test_download_failure_says_so_and_leaves_nothing_behind(tmp_path, monkeypatch, server):
    base, folder = server
    point_release_at(monkeypatch, base + "missing/", folder)  # 404
    root = tmp_path / "root"
    with pytest.raises(ConnectionError, match="images_background.zip"):
        Omniglot(root, download=True, progress=False)
    assert not list(root.iterdir())


def test_split_gives_disjoint_rotated_characters(tmp_path, monkeypatch):
    data = Omniglot(make_root(tmp_path / "root"), progress=False)
    with pytest.raises(ValueError, match="maml"):
        data.split("vinyals")
    monkeypatch.setitem(omniglot.SPLITS, "maml", dict(omniglot.SPLITS["maml"], sizes=(4, 2, 2)))
    parts = data.split()
    assert all(isinstance(part, ClassDataset) for part in parts)
    assert [part.num_classes for part in parts] == [16, 8, 8] and all(p.rotations == (0, 1, 2, 3) for p in parts)
    assert sorted(sum((part.classes for part in parts), [])) == sorted(CLASSES)


def test_maml_split_is_the_papers():
    assert omniglot.SPLITS["maml"] == dict(sizes=(1100, 100, 423), seed=1, rotations=(0, 1, 2, 3))


@pytest.mark.slow
def test_real_omniglot():
    if not os.environ.get("MLKIT_DATA"):
        pytest.skip("MLKIT_DATA is not set; point it at the folder holding omniglot/ (CI: ../shared/data)")
    root = Path(os.environ["MLKIT_DATA"]) / "omniglot"
    if not all((root / name).is_file() or (root / name[:-4]).is_dir() for name in omniglot.RELEASE):
        pytest.skip(f"the Omniglot archives are not in {root}")
    data = Omniglot(root, progress=False)
    assert len(data.classes) == 1623 and data.images.shape == (32460, 1, 28, 28)
    assert data.counts.eq(20).all()
    assert sum(name.startswith("images_background/") for name in data.classes) == 964
    assert len(set(data.alphabets)) == 50
    train, val, test = data.split("maml")
    assert [len(part.classes) for part in (train, val, test)] == [1100, 100, 423]
    assert [part.num_classes for part in (train, val, test)] == [4400, 400, 1692]
    assert not set(train.classes) & set(val.classes) and not set(train.classes) & set(test.classes)
    assert not set(val.classes) & set(test.classes)
