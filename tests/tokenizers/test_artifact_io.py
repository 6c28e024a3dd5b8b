"""Output-folder guard shared by the tokenizer writers."""

from __future__ import annotations

import json

import pytest

from recsys.errors import ArtifactError
from recsys.tokenizers.artifact_io import check_out_dir


def test_a_folder_of_another_kind_is_refused_and_the_same_kind_replaced(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "text_embeddings"}))
    with pytest.raises(ArtifactError, match="another artifact.*'text_embeddings'"):
        check_out_dir(tmp_path, "cf_embeddings", "the CF embeddings")
    check_out_dir(tmp_path, "text_embeddings", "the text embeddings")


def test_unknown_files_are_refused_only_when_asked(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    check_out_dir(tmp_path, "text_embeddings", "the text embeddings")
    with pytest.raises(ArtifactError, match="non-empty folder without a manifest"):
        check_out_dir(tmp_path, "cf_embeddings", "the CF embeddings", refuse_unknown_files=True)
    check_out_dir(tmp_path / "new", "cf_embeddings", "the CF embeddings", refuse_unknown_files=True)
