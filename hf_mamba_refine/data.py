"""Corpora that exist on every machine: the Python standard library's own source files, as bytes.

Tokens are UTF-8 bytes (vocabulary 256; the sources are almost all ASCII, so this is a character-level
corpus). The file list is sorted and each file's split is fixed by a CRC32 of its relative path, so the split
is deterministic for a given Python version.
"""

import sysconfig
import zlib
from pathlib import Path

import torch
from torch import Tensor

VOCAB_SIZE = 256
DEFAULT_PACKAGES = ("asyncio", "email", "multiprocessing", "xml")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(package: str | None = None) -> list[Path]:
    """Sorted ``.py`` files of the standard library (or of one top-level package), without site-packages."""
    root = stdlib_root()
    base = root if package is None else root / package
    if not base.is_dir():
        raise ValueError(f"expected a standard-library package directory, {base} does not exist")
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in base.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def split_of(path: Path, val_every: int = 10) -> str:
    """``"val"`` for about one file in ``val_every`` (CRC32 of the relative path), else ``"train"``."""
    key = path.relative_to(stdlib_root()).as_posix().encode()
    return "val" if zlib.crc32(key) % val_every == 0 else "train"


def _read(path: Path) -> bytes:
    return path.read_bytes() + b"\n"


def char_corpus(split: str, max_bytes: int, cache_dir: Path | None = None) -> Tensor:
    """The first ``max_bytes`` bytes of the ``split`` files concatenated in sorted order, as ``uint8 [T]``."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    cache = None if cache_dir is None else Path(cache_dir) / f"stdlib-{split}-{max_bytes}.pt"
    if cache is not None and cache.exists():
        return torch.load(cache)
    chunks, total = [], 0
    for path in stdlib_files():
        if total >= max_bytes:
            break
        if split_of(path) == split:
            chunks.append(_read(path))
            total += len(chunks[-1])
    data = torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).clone()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, cache)
    return data


def package_snippets(
    packages: tuple[str, ...], length: int, split: str, val_every: int = 5
) -> tuple[Tensor, Tensor]:
    """Non-overlapping ``length``-byte windows of each package's files with the package index as label.

    Returns ``snippets [S, length]`` (uint8) and ``labels [S]`` (long); files are split with ``val_every``.
    """
    snippets, labels = [], []
    for label, package in enumerate(packages):
        files = [path for path in stdlib_files(package) if split_of(path, val_every) == split]
        data = torch.frombuffer(bytearray(b"".join(_read(path) for path in files)), dtype=torch.uint8)
        windows = data[: len(data) // length * length].view(-1, length)
        snippets.append(windows)
        labels.append(torch.full((len(windows),), label, dtype=torch.long))
    return torch.cat(snippets), torch.cat(labels)
