"""The resolver fetches pinned distributions with pip, verifies them, opens nested archives safely."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.data.sources import resolve
from pipeline.errors import PipelineError


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package index (a find-links folder) with a wheel and an sdist; pip reads only from it."""
    links = tmp_path / "links"
    links.mkdir()
    inner = _tar_gz({"inner/data.txt": b"1\t2.0\tnested text\n"})
    with zipfile.ZipFile(links / "demo_pkg-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("demo_pkg/model/config.json", "{}")
        whl.writestr("demo_pkg/resources.tar.gz", inner)
        whl.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\n")
        whl.writestr("demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    (links / "demo_pkg-1.0.tar.gz").write_bytes(
        _tar_gz(
            {
                "demo_pkg-1.0/setup.py": b"from setuptools import setup\nsetup(name='demo_pkg', version='1.0')\n",
                "demo_pkg-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\n",
                "demo_pkg-1.0/extra/resources.tar.gz": inner,
            }
        )
    )
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # build the sdist's metadata with the installed setuptools
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    return links


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_folder_is_resolved_and_pinned(index: Path) -> None:
    path = resolve("pypi:demo_pkg==1.0/demo_pkg/model", sha(index / "demo_pkg-1.0-py3-none-any.whl"))
    assert (path / "config.json").read_text() == "{}"


def test_sdist_path_reaches_into_a_nested_archive(index: Path) -> None:
    path = resolve("pypi+sdist:demo_pkg==1.0/extra/resources.tar.gz/inner/data.txt", sha(index / "demo_pkg-1.0.tar.gz"))
    assert path.read_text() == "1\t2.0\tnested text\n"


def test_second_resolve_uses_the_cache(index: Path) -> None:
    first = resolve("pypi:demo_pkg==1.0/demo_pkg/resources.tar.gz/inner/data.txt")
    for dist in index.iterdir():
        dist.unlink()  # the index is gone: only the cache can answer
    assert resolve("pypi:demo_pkg==1.0/demo_pkg/resources.tar.gz/inner/data.txt") == first


def test_checksum_mismatch_names_the_file_and_key(index: Path) -> None:
    with pytest.raises(PipelineError, match=r"demo_pkg-1.0-py3-none-any.whl: checksum mismatch for model.source"):
        resolve("pypi:demo_pkg==1.0/demo_pkg/model", "0" * 64, key="model.source")


def test_missing_inner_path_is_named(index: Path) -> None:
    with pytest.raises(PipelineError, match="no 'demo_pkg/absent' inside the package"):
        resolve("pypi:demo_pkg==1.0/demo_pkg/absent/file.txt")


def test_unknown_version_reports_pip_error(index: Path) -> None:
    with pytest.raises(PipelineError, match=r"pip download demo_pkg==9.9: .*"):
        resolve("pypi:demo_pkg==9.9/x")


def test_archive_with_path_traversal_is_refused(index: Path, tmp_path: Path) -> None:
    evil = tmp_path / "links" / "evil_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as whl:
        whl.writestr("../escaped.txt", "x")
        whl.writestr("evil_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: evil_pkg\nVersion: 1.0\n")
        whl.writestr("evil_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("evil_pkg-1.0.dist-info/RECORD", "")
    with pytest.raises(PipelineError, match="unsafe path '../escaped.txt'"):
        resolve("pypi:evil_pkg==1.0/x")
    assert not (tmp_path / "cache" / "escaped.txt").exists()


def test_parent_references_in_the_uri_are_refused() -> None:
    with pytest.raises(PipelineError, match="'..' is not allowed"):
        resolve("pypi:demo_pkg==1.0/../../etc/passwd")


def test_local_path_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"nope.tsv: file not found \(from ingest.source\)"):
        resolve(str(tmp_path / "nope.tsv"), key="ingest.source")


def test_local_file_checksum_is_checked(tmp_path: Path) -> None:
    data = tmp_path / "data.tsv"
    data.write_text("x")
    assert resolve(str(data), sha(data)) == data
    with pytest.raises(PipelineError, match="data.tsv: checksum mismatch"):
        resolve(str(data), "f" * 64)


def test_hub_source_fails_with_one_line_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match=r"^model.source: cannot fetch hf:org/model from the Hugging Face hub"):
        resolve("hf:org/model", key="model.source")
