from pathlib import Path

import pytest

import tfenv  # noqa: F401  (first: TensorFlow reads its settings when it loads)

from cifar_files import write_archive, write_cifar_folder

ROOT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; run in CI, deselect with -m 'not slow'")
    config.addinivalue_line("markers", "gpu: needs no TensorFlow; bench/gpu_check.sh runs these on the GPU machine")


@pytest.fixture(autouse=True)
def isolated_data_env(tmp_path_factory, monkeypatch):
    """No test reads the user's caches or reaches the network: downloads go to a closed local port."""
    monkeypatch.setenv("CIFAR10_CACHE", str(tmp_path_factory.getbasetemp() / "cifar-cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras-home"))
    monkeypatch.setenv("CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.delenv("CIFAR10_DIR", raising=False)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """A folder holding cifar-10-batches-py/ with 200 training and 40 test images."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    folder, arrays = write_cifar_folder(root)
    return root, arrays


@pytest.fixture(scope="session")
def tiny_archive(tiny_cifar, tmp_path_factory):
    root, arrays = tiny_cifar
    archive = write_archive(root / "cifar-10-batches-py", tmp_path_factory.mktemp("tiny-archive") / "cifar-10-python.tar.gz")
    return archive, arrays


@pytest.fixture
def real_archive():
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"the real CIFAR-10 archive is not at {REAL_ARCHIVE}")
    return REAL_ARCHIVE
