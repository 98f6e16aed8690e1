"""Fashion-MNIST for both twins: find the original files, verify them, parse exactly the bytes verified.

Where the data is looked for, first match wins:
  1. the `data_dir` argument (`--data-dir` on the scripts);
  2. the FASHION_TWINS_DATA environment variable;
  3. Debian's `dataset-fashion-mnist` folder, /usr/share/datasets/fashion-mnist;
  4. the cache folder (FASHION_TWINS_CACHE, default ~/.cache/fashion-twins), where a torchvision
     download lands.
A folder qualifies if it holds the four `.gz` files (Debian's layout) or torchvision's
`FashionMNIST/raw/` layout. The `.gz` files are decompressed once into the cache folder in
torchvision's layout, checked against the sha256 of the decompressed bytes (Debian recompressed
the archives, so torchvision's .gz md5s do not apply). load_fashion_mnist reads each file once,
checks the sha256 of those bytes and parses the same bytes (IDX: big-endian header, uint8 data),
so only verified bytes reach a model; torchvision, which would prefer a stale `processed/*.pt`
beside `raw/`, never reads them. prepare_raw's root (for torchvision's own dataset class, used by
the tutorial benchmark) never holds `processed/` files. torchvision is imported lazily, for --download.

Both twins get the same byte-identical uint8 arrays and scale them by 1/255, as ToTensor does.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes
from .errors import DataError

ENV_DATA = "FASHION_TWINS_DATA"
ENV_CACHE = "FASHION_TWINS_CACHE"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# sha256 of the decompressed IDX files of the original release.
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FIX_HINT = (
    "install it with `apt-get install -y dataset-fashion-mnist` (Debian, as root), "
    "or put the four original .gz files in a folder and pass --data-dir DIR (or set FASHION_TWINS_DATA), "
    "or pass --download to fetch it with torchvision"
)


@dataclasses.dataclass
class FashionData:
    """The whole set as uint8 arrays: images (N, 28, 28), labels (N,) with values 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str = ""

    def limit(self, train: int | None = None, test: int | None = None) -> FashionData:
        """The first `train` / `test` examples (for tests and dry runs)."""
        return FashionData(
            self.train_images[:train],
            self.train_labels[:train],
            self.test_images[:test],
            self.test_labels[:test],
            self.source,
        )


def scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 in [0, 1], exactly as ToTensor divides by 255."""
    return images.astype(np.float32) / np.float32(255.0)


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "fashion-twins")


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def _has_gz(folder: Path, names) -> bool:
    return all((folder / f"{name}.gz").is_file() for name in names)


def _has_raw(root: Path, names) -> bool:
    return all((_raw_dir(root) / name).is_file() for name in names)


def candidate_dirs(data_dir=None):
    """The folders searched, in order, each with where it came from."""
    out = []
    if data_dir:
        out.append((Path(data_dir), "--data-dir"))
    if os.environ.get(ENV_DATA):
        out.append((Path(os.environ[ENV_DATA]), ENV_DATA))
    out.append((DEBIAN_DIR, "Debian package"))
    out.append((cache_root(), "cache"))
    return out


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str) -> None:
    got = file_sha256(path)
    if got != expected:
        raise DataError(f"{path} is corrupt or partial (sha256 {got[:12]}..., expected {expected[:12]}...); {FIX_HINT}")


def prepare_raw(data_dir=None, checksums: dict[str, str] = SHA256, download: bool = False) -> Path:
    """Return a torchvision root whose FashionMNIST/raw/ holds the four verified, decompressed files."""
    names = list(checksums)
    for folder, origin in candidate_dirs(data_dir):
        if _has_raw(folder, names):
            for name in names:
                _verify(_raw_dir(folder) / name, checksums[name])
            return _without_legacy(folder, names)
        if _has_gz(folder, names):
            root = cache_root() if folder != cache_root() else folder
            raw = _raw_dir(root)
            raw.mkdir(parents=True, exist_ok=True)
            # A folder the user named is verified every time, even when the cache already holds
            # good copies: a corrupt file there is an error, not something the cache hides.
            named = origin in ("--data-dir", ENV_DATA)
            for name in names:
                target = raw / name
                cached = target.is_file() and file_sha256(target) == checksums[name]
                if cached and not named:
                    continue
                try:
                    with gzip.open(folder / f"{name}.gz", "rb") as f:
                        payload = f.read()
                except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
                    raise DataError(
                        f"{folder / (name + '.gz')} is not a readable gzip file ({e}); {FIX_HINT}"
                    ) from None
                digest = hashlib.sha256(payload).hexdigest()
                if digest != checksums[name]:
                    raise DataError(
                        f"{folder / (name + '.gz')} decompresses to the wrong bytes (sha256 {digest[:12]}..., "
                        f"expected {checksums[name][:12]}...); {FIX_HINT}"
                    )
                if not cached:
                    atomic_write_bytes(target, payload)
            return _without_legacy(root, names)
        if origin in ("--data-dir", ENV_DATA):  # a folder the user named must hold the data: no silent fallback
            if not folder.exists():
                raise DataError(f"{origin} {folder} does not exist; {FIX_HINT}")
            if not folder.is_dir():
                raise DataError(f"{origin} {folder} is a file, not a folder; {FIX_HINT}")
            present = sorted(p.name for p in folder.glob("*"))
            raise DataError(
                f"{origin} {folder} holds no Fashion-MNIST files "
                f"(need {', '.join(n + '.gz' for n in names)}; found {', '.join(present[:6]) or 'nothing'}); {FIX_HINT}"
            )
    if download:
        return _download(names, checksums)
    searched = ", ".join(str(f) for f, _ in candidate_dirs(data_dir))
    raise DataError(f"Fashion-MNIST not found (searched {searched}); {FIX_HINT}")


# torchvision.datasets.FashionMNIST loads these instead of raw/ when they exist, unverified.
LEGACY_FILES = ("training.pt", "test.pt")


def _without_legacy(root: Path, names) -> Path:
    """`root`, or the cache holding copies of its verified raw files, such that torchvision finds no processed/ file.

    The cache is ours: stale processed files there are removed. A folder of the user's is never changed.
    """
    processed = root / "FashionMNIST" / "processed"
    if not any((processed / f).exists() for f in LEGACY_FILES):
        return root
    if root == cache_root():
        shutil.rmtree(processed, ignore_errors=True)
        return root
    raw = _raw_dir(cache_root())
    raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        atomic_write_bytes(raw / name, (_raw_dir(root) / name).read_bytes())
    return _without_legacy(cache_root(), names)


def _read_verified(path: Path, expected: str) -> bytes:
    """The file's bytes, once read and checked: the bytes parsed are the bytes hashed."""
    try:
        payload = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; {FIX_HINT}") from None
    got = hashlib.sha256(payload).hexdigest()
    if got != expected:
        raise DataError(f"{path} is corrupt or partial (sha256 {got[:12]}..., expected {expected[:12]}...); {FIX_HINT}")
    return payload


def parse_idx(payload: bytes, path, ndim: int) -> np.ndarray:
    """An IDX file of uint8 data (magic 0 0 0x08 ndim, ndim big-endian uint32 sizes, data) as an array."""
    head = 4 + 4 * ndim
    if len(payload) < head or payload[:4] != bytes([0, 0, 0x08, ndim]):
        raise DataError(f"{path} is not an IDX file of {ndim}-d uint8 data; {FIX_HINT}")
    dims = struct.unpack(f">{ndim}I", payload[4:head])
    if len(payload) - head != int(np.prod(dims, dtype=np.int64)):
        raise DataError(f"{path} holds {len(payload) - head} data bytes, its header says {dims}; {FIX_HINT}")
    return np.frombuffer(payload, np.uint8, offset=head).reshape(dims).copy()


def _download(names, checksums) -> Path:
    """torchvision's own download, into the cache folder; then the usual sha256 check."""
    from torchvision import datasets

    root = cache_root()
    try:
        datasets.FashionMNIST(str(root), train=True, download=True)
        datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as e:
        raise DataError(f"torchvision could not download Fashion-MNIST ({e}); {FIX_HINT}") from None
    for name in names:
        _verify(_raw_dir(root) / name, checksums[name])
    return root


def load_fashion_mnist(data_dir=None, download: bool = False, checksums: dict[str, str] = SHA256) -> FashionData:
    """Load the whole train and test sets as uint8 numpy arrays (the layout torchvision.datasets.FashionMNIST gives).

    Args:
      data_dir: a folder with the four .gz files or torchvision's layout; see the module doc for the search order.
      download: fall back to torchvision's download when no folder qualifies.
      checksums: decompressed file name -> sha256 (the tests pass their own for synthetic files).
    Returns:
      FashionData with train (60000, 28, 28) and test (10000, 28, 28) images.
    """
    root = prepare_raw(data_dir, checksums, download)
    arrays = {}
    for name in checksums:
        path = _raw_dir(root) / name
        arrays[name] = parse_idx(_read_verified(path, checksums[name]), path, 3 if "images" in name else 1)
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if len(images) != len(labels) or images.shape[1:] != (28, 28) or (labels.size and labels.max() > 9):
            raise DataError(
                f"{_raw_dir(root)}: {split} images {images.shape} and labels {labels.shape} "
                f"(max {labels.max() if labels.size else None}) are not Fashion-MNIST's; {FIX_HINT}"
            )
    return FashionData(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"].astype(np.int32),
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"].astype(np.int32),
        source=str(root),
    )


def batch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Shuffled indices for one epoch, (steps, batch_size); the last partial batch is dropped.

    Both twins draw their batches from this one numpy generator, so identical seeds give
    identical batch orders in torch and in flax (the lockstep proof depends on it).
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(num_examples)
    steps = num_examples // batch_size
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)
