"""``recsys serve``: registry loading, startup verification, T5 on the torch engine, a real server process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from recsys.cli import main
from recsys.errors import ArtifactError

pytestmark = pytest.mark.slow


def serve_args(**overrides):
    from recsys.serving.batcher import BatcherConfig
    from recsys.serving.config import ServeConfig

    values = dict(batcher=BatcherConfig(max_batch_size=8, max_wait_ms=1.0, max_queue=64), threads=0,
                  catalogue="sqlite://", catalogue_poll_s=0.0, drain_s=1.0)
    values.update(overrides)
    return ServeConfig(**values)


def test_a_registered_model_is_served_under_its_name_and_version(qwen_bundle, tmp_path, monkeypatch):
    import mlflow

    from recsys import tracking
    from recsys.serving.commands import build_app

    monkeypatch.chdir(tmp_path)  # run artifacts land in this test's folder, not the checkout
    mlflow.set_experiment(experiment_id=tracking.experiment_id("serving-test"))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(qwen_bundle), artifact_path="bundle")
    assert main(["register", "--run", run.info.run_id, "--name", "setrec", "--alias", "champion"]) == 0
    token_file = tmp_path / "admin.token"
    token_file.write_text("registry-admin-token-123\n")
    token_file.chmod(0o600)
    app = build_app(serve_args(model="models:/setrec@champion", admin_token_file=str(token_file)))
    with TestClient(app) as client:
        body = client.post("/v1/recommend", json={"history": ["1", "50"], "k": 5}).json()
        assert body["model"] == {"name": "setrec", "version": "1"} and len(body["items"]) == 5
        added = client.post("/v1/items", json={"id": "reg-new", "text": "a film"}, headers={"Authorization": "Bearer registry-admin-token-123"})
        assert added.status_code == 201
    app.state.recommender.close()
    with pytest.raises(ArtifactError, match="models:/setrec@nobody"):
        build_app(serve_args(model="models:/setrec@nobody"))


def test_startup_refuses_a_tampered_bundle_a_short_token_and_t5_on_vllm(qwen_bundle, t5_bundle, tmp_path, capsys):
    broken = shutil.copytree(qwen_bundle, tmp_path / "broken")
    with open(broken / "items.parquet", "r+b") as handle:
        handle.seek(-12, 2)
        handle.write(b"\x00" * 4)
    assert main(["serve", "--bundle", str(broken)]) == 2
    assert "does not match the manifest" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    short = tmp_path / "short.token"
    short.write_text("abc")
    short.chmod(0o600)
    assert main(["serve", "--bundle", str(qwen_bundle), "--admin-token-file", str(short)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(t5_bundle), "--engine", "vllm"]) == 2
    assert "qwen backbone" in capsys.readouterr().err


def test_t5_bundle_on_the_torch_engine_ranks_like_score_all(t5_bundle, heldout):
    from recsys.models.setrec import pad_histories
    from recsys.serving.service import Query, Recommender

    recommender = Recommender.from_bundle(t5_bundle, "torch")
    model = recommender.model
    histories = heldout.histories[:16]
    answers = recommender.recommend([Query([recommender._ids[r] for r in h], k=10, exclude_history=False) for h in histories])
    top = model.score_all(pad_histories(histories, model.bundle.max_len), model.bundle.beta).topk(10)
    for answer, expected, scores in zip(answers, top.indices.tolist(), top.values):
        assert answer.ids == [recommender._ids[r] for r in expected]
        torch.testing.assert_close(torch.tensor(answer.scores), scores, atol=1e-4, rtol=1e-4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_recsys_serve_answers_over_http(qwen_bundle, tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys", "serve", "--bundle", str(qwen_bundle), "--port", str(port), "--threads", "1"],
        cwd=tmp_path,  # the default catalogue store, setrec-catalogue.db, is created in the working directory
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "recsys serve did not become ready in 120 s"
            time.sleep(0.5)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/recommend", json={"history": ["1", "2"], "k": 3}, timeout=10)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3
        assert httpx.post(f"http://127.0.0.1:{port}/v1/items", json={"id": "x", "text": "y"}, timeout=10).status_code == 403
        assert "setrec_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert (tmp_path / "setrec-catalogue.db").is_file()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_token_file_others_can_read_is_refused(qwen_bundle, tmp_path, capsys):
    token = tmp_path / "admin.token"
    token.write_text("a-long-enough-admin-token\n")
    token.chmod(0o644)
    assert main(["serve", "--bundle", str(qwen_bundle), "--admin-token-file", str(token)]) == 2
    err = capsys.readouterr().err.strip()
    assert "lets other users read the token" in err and f"chmod 600 {token}" in err and err.count("\n") == 0


def resign(path) -> None:
    import json

    from recsys.bundle import manifest_checksum

    manifest = json.loads((path / "manifest.json").read_text())
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def edit(path, change) -> None:
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    resign(path)


def replace_file(path, name, data: bytes) -> None:
    import hashlib

    (path / name).write_bytes(data)
    edit(path, lambda m: m["files"].__setitem__(name, hashlib.sha256(data).hexdigest()))


def _t5_backbone(t5_bundle):
    import json

    return json.loads((t5_bundle / "manifest.json").read_text())["backbone_config"]


BAD_BUNDLES = {
    "manifest is a JSON list": (lambda p, t5: (p / "manifest.json").write_text("[1, 2]"), "holds a JSON list"),
    "string beta": (lambda p, t5: edit(p, lambda m: m.__setitem__("beta", "0.5")), "field beta: Input should be a valid number"),
    "missing shapes": (lambda p, t5: edit(p, lambda m: m.pop("shapes")), "field shapes: Field required"),
    "max_len -5": (lambda p, t5: edit(p, lambda m: m.__setitem__("max_len", -5)), "field max_len: Input should be greater than 0"),
    "hand-edited manifest": (lambda p, t5: (p / "manifest.json").write_text((p / "manifest.json").read_text().replace('"max_len": 10', '"max_len": 3')), "manifest_sha256"),
    "invalid YAML config": (lambda p, t5: replace_file(p, "config.yaml", b"model: [unclosed\n"), "config.yaml is not valid safe YAML"),
    "tagged YAML config": (lambda p, t5: replace_file(p, "config.yaml", b"!!python/object/apply:os.system ['true']\n"), "config.yaml is not valid safe YAML"),
    "items.parquet not Parquet": (lambda p, t5: replace_file(p, "items.parquet", b"item_idx,item_id\n0,1\n"), "items.parquet is not a readable Parquet file"),
    "qwen over a T5 backbone config": (lambda p, t5: edit(p, lambda m: m.__setitem__("backbone_config", t5)), "backbone_config.model_type is 't5'"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_every_bad_bundle_is_one_line_and_exit_2(qwen_bundle, t5_bundle, tmp_path, capsys, case):
    damage, expected = BAD_BUNDLES[case]
    bundle = shutil.copytree(qwen_bundle, tmp_path / "bundle")
    damage(bundle, _t5_backbone(t5_bundle))
    assert main(["serve", "--bundle", str(bundle), "--catalogue", "sqlite://"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and "Traceback" not in err, err
    assert expected in err, err
