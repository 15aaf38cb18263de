"""Omniglot (Lake et al., Science 2015): 1,623 handwritten characters, 20 drawings each, read from the release zips."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .dataset import ClassDataset
from .download import fetch

_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# The official archives and their md5, as torchvision's Omniglot dataset checks them.
RELEASE = {
    "images_background.zip": (_URL + "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": (_URL + "images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
}
# Named class splits: arguments of ClassDataset.split_classes.
SPLITS = {"maml": dict(sizes=(1100, 100, 423), seed=1, rotations=(0, 1, 2, 3))}
_CACHE_VERSION = 1  # bump when the decoding changes, so old cache files are not reused


def default_root() -> Path:
    """Where Omniglot lives when no root is given.

    Returns:
        ``$MLKIT_DATA/omniglot`` if ``MLKIT_DATA`` is set, else ``$XDG_DATA_HOME/mlkit/omniglot``
        (``~/.local/share/mlkit/omniglot`` without ``XDG_DATA_HOME``).
    """
    if os.environ.get("MLKIT_DATA"):
        return Path(os.environ["MLKIT_DATA"]).expanduser() / "omniglot"
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home).expanduser() / "mlkit" / "omniglot"


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$MLKIT_CACHE``, else ``$XDG_CACHE_HOME/mlkit`` or ``~/.cache/mlkit``."""
    if os.environ.get("MLKIT_CACHE"):
        return Path(os.environ["MLKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mlkit"


class Omniglot(ClassDataset):
    """All 1,623 Omniglot characters as one ClassDataset: background archive first, then evaluation.

    The first load decodes the 32,460 PNGs (grayscale, inverted so strokes are 255 on a 0 background,
    resized with Lanczos) and caches them in :func:`cache_dir`; later loads read that cache.

    Args:
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip`` or their extracted
            folders (zips win when both are there); ``None`` means :func:`default_root`. Only read, unless
            ``download`` has to fetch a missing archive.
        image_size: side of the square images in pixels (28 as in the MAML paper).
        download: fetch missing archives from the official release and check their md5.
        progress: show progress bars while downloading and decoding.

    Attributes:
        alphabets: the alphabet of each base class; class names read ``"images_background/Latin/character01"``.
    """

    def __init__(self, root: str | os.PathLike | None = None, image_size: int = 28, download: bool = False,
                 progress: bool = True):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int (pixels per side), got {image_size!r}")
        self.root = default_root() if root is None else Path(root).expanduser()
        self.image_size = image_size
        if download:
            _download(self.root, progress)
        archives = _find_archives(self.root)
        key = _cache_key(archives, image_size)
        path = cache_dir() / f"omniglot-{image_size}px-{key}.pt"
        data = _read_cache(path)
        if data is None:
            data = _decode_all(archives, image_size, progress)
            _write_cache(path, data)
        super().__init__(data["images"], data["labels"], data["classes"])
        self.alphabets: list[str] = list(data["alphabets"])

    def split(self, name: str = "maml") -> tuple[ClassDataset, ClassDataset, ClassDataset]:
        """Disjoint train / validation / test characters of a named split.

        Args:
            name: ``"maml"``: the 1,623 characters shuffled with seed 1 and cut into 1100 / 100 / 423, every
                character also turned by 90, 180 and 270 degrees as new classes (4400 / 400 / 1692 classes).

        Returns:
            ``(train, val, test)`` ClassDatasets.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown Omniglot split {name!r}; known splits: {sorted(SPLITS)}")
        train, val, test = self.split_classes(**SPLITS[name])
        return train, val, test


def _find_archives(root: Path) -> list[Path]:
    """The zip (preferred) or extracted folder of each archive; one FileNotFoundError if any is missing."""
    found, missing = [], []
    for name in RELEASE:
        zip_path, folder = root / name, root / name.removesuffix(".zip")
        if zip_path.is_file() or folder.is_dir():
            found.append(zip_path if zip_path.is_file() else folder)
        else:
            missing.append(name)
    if missing:
        urls = "\n".join(f"  {url}" for url, _ in RELEASE.values())
        raise FileNotFoundError(
            f"Omniglot not found: {', '.join(missing)} missing from {root}. Put images_background.zip and "
            f"images_evaluation.zip (or their extracted folders) there, set MLKIT_DATA to the folder holding "
            f"omniglot/, or pass download=True to fetch them from:\n{urls}")
    return found


def _list_pngs(archive: Path) -> list[str]:
    """Sorted PNG names ``<archive>/<Alphabet>/<character>/<file>.png`` of a zip or folder, layout checked."""
    if archive.is_dir():
        names = [p.relative_to(archive.parent).as_posix() for p in archive.rglob("*.png")]
    else:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(".png") and not n.startswith("__MACOSX/")]
    stem = archive.name.removesuffix(".zip")
    wrong = [n for n in names if len(n.split("/")) != 4 or n.split("/")[0] != stem]
    if wrong or not names:
        raise ValueError(f"{archive} does not have the Omniglot layout {stem}/<Alphabet>/<character>/<drawing>.png "
                         f"({f'found {wrong[0]}' if wrong else 'no PNGs found'}); replace it with the official archive")
    return sorted(names)


def _cache_key(archives: list[Path], image_size: int) -> str:
    """A digest of the archives' contents (sha256 of a zip, file list + sizes of a folder) and the image size."""
    parts = [f"v{_CACHE_VERSION}", str(image_size)]
    for archive in archives:
        digest = hashlib.sha256()
        if archive.is_dir():
            files = sorted(p for p in archive.rglob("*") if p.is_file())
            size = sum(p.stat().st_size for p in files)
            for p in files:
                digest.update(f"{p.relative_to(archive).as_posix()}\t{p.stat().st_size}\n".encode())
        else:
            size = archive.stat().st_size
            with open(archive, "rb") as file:
                while chunk := file.read(1 << 22):
                    digest.update(chunk)
        parts.append(f"{archive.name}:{size}:{digest.hexdigest()}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _decode(data: bytes, image_size: int) -> bytes:
    """One Omniglot PNG as ``image_size**2`` grayscale bytes: strokes 255, background 0, Lanczos-resized."""
    with Image.open(io.BytesIO(data)) as image:
        inverted = ImageOps.invert(image.convert("L"))
    return inverted.resize((image_size, image_size), Image.LANCZOS).tobytes()


def _decode_all(archives: list[Path], image_size: int, progress: bool) -> dict:
    """Decode every drawing of the archives into the cached dict (images, labels, classes, alphabets)."""
    listed = []
    for archive in archives:
        try:
            listed.append((archive, _list_pngs(archive)))
        except zipfile.BadZipFile as error:
            raise ValueError(f"{archive} is not a valid zip archive ({error}); delete it and download it again") from error
    pixels, labels, classes, alphabets = bytearray(), [], [], []
    bar = tqdm(total=sum(len(names) for _, names in listed), desc="Decoding Omniglot", unit="img", disable=not progress)
    with bar:
        for archive, names in listed:
            zf = None if archive.is_dir() else zipfile.ZipFile(archive)
            try:
                for name in names:
                    character = name.rsplit("/", 1)[0]
                    if not classes or classes[-1] != character:
                        classes.append(character)
                        alphabets.append(name.split("/")[1])
                    try:
                        data = (archive.parent / name).read_bytes() if zf is None else zf.read(name)
                        pixels += _decode(data, image_size)
                    except Exception as error:
                        raise ValueError(f"cannot decode {name} in {archive} ({error}); the archive is corrupt, "
                                         f"replace it with the official one") from error
                    labels.append(len(classes) - 1)
                    bar.update()
            finally:
                if zf is not None:
                    zf.close()
    images = torch.frombuffer(pixels, dtype=torch.uint8).reshape(-1, 1, image_size, image_size).clone()
    return {"images": images, "labels": torch.tensor(labels), "classes": classes, "alphabets": alphabets}


def _read_cache(path: Path) -> dict | None:
    """The cached dict at ``path``, or None when it is absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:
        return None


def _write_cache(path: Path, data: dict) -> None:
    """Save ``data`` atomically (temp file + rename); warn and go on if the cache folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        warnings.warn(f"cannot cache Omniglot in {path.parent} ({error}); set MLKIT_CACHE to a writable folder")
        return
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(data, file)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(root: Path, progress: bool) -> None:
    """Fetch each archive missing from ``root`` (neither zip nor folder there), checking its md5."""
    for name, (url, md5) in RELEASE.items():
        if (root / name).is_file() or (root / name.removesuffix(".zip")).is_dir():
            continue
        fetch(url, root / name, "md5", md5, progress=progress)
