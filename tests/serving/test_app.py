"""The ranking service over a tiny bundle trained on MovieLens-100k: API, limits, auth, concurrency, insertion."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from recsys.serving.app import AppConfig, create_app
from recsys.serving.batcher import BatcherConfig
from recsys.serving.schemas import DEFAULT_MAX_HISTORY, MAX_BODY_BYTES

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="module")
def client(qwen_recommender):
    app = create_app(qwen_recommender, AppConfig(admin_token=TOKEN, batcher=BatcherConfig(max_batch_size=16, max_wait_ms=2)))
    with TestClient(app) as test_client:
        yield test_client


def ids_of(items_json):
    return [item["id"] for item in items_json["items"]]


def source_ids(recommender, rows):
    return [recommender._ids[r] for r in rows]


def test_recommend_answers_the_index_ranking_which_equals_score_all(client, qwen_recommender, heldout):
    rec = qwen_recommender
    model = rec.model
    histories = heldout.histories[:20]
    for history in histories[:5]:
        body = client.post("/v1/recommend", json={"history": source_ids(rec, history), "k": 10, "exclude_history": False}).json()
        from recsys.models.setrec import pad_histories

        scores = model.score_all(pad_histories([history], model.bundle.max_len), model.bundle.beta)[0]
        top = torch.topk(scores, 10)
        assert ids_of(body) == source_ids(rec, top.indices.tolist())
        np.testing.assert_allclose([i["score"] for i in body["items"]], top.values.numpy(), rtol=1e-4, atol=1e-4)
        assert body["model"]["name"] == "bundle-qwen" and body["model"]["version"].startswith("sha-")
        assert body["items"][0]["title"] == rec._titles[top.indices[0]]


def test_exclusions_candidates_and_unknown_ids(client, qwen_recommender):
    history = ["50", "172", "181"]
    full = client.post("/v1/recommend", json={"history": history, "k": 30, "exclude_history": False}).json()
    excluded = client.post("/v1/recommend", json={"history": history + ["no-such-item"], "k": 20, "exclude": [ids_of(full)[0]]}).json()
    assert excluded["unknown_items"] == ["no-such-item"]
    returned = ids_of(excluded)
    assert len(returned) == 20 and not set(returned) & set(history) and ids_of(full)[0] not in returned
    expected = [i for i in ids_of(full) if i not in set(history) | {ids_of(full)[0]}][:20]
    assert returned[: len(expected)] == expected
    pool = ["1", "2", "3", "4", "zzz"]
    ranked = client.post("/v1/recommend", json={"history": history, "k": 10, "candidates": pool}).json()
    assert sorted(ids_of(ranked)) == ["1", "2", "3", "4"] and ranked["unknown_items"] == ["zzz"]
    scores = [i["score"] for i in ranked["items"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_history_and_limits_are_4xx_naming_the_field(client):
    answer = client.post("/v1/recommend", json={"history": ["nope", "nada"]})
    assert answer.status_code == 422 and answer.json()["field"] == "history"
    for body, field in [
        ({"history": ["1"], "k": 0}, "k"),
        ({"history": ["1"], "k": 1001}, "k"),
        ({"history": []}, "history"),
        ({"history": ["1"] * (DEFAULT_MAX_HISTORY + 1)}, "history"),
        ({"history": ["1"], "surprise": 1}, "surprise"),
        ({"history": [1]}, "history.0"),
        ({"requests": []}, "history"),
    ]:
        answer = client.post("/v1/recommend", json=body)
        assert answer.status_code == 422, body
        assert answer.json()["field"] == field, (body, answer.json())
    batch = client.post("/v1/recommend/batch", json={"requests": [{"history": ["1"]}, {"history": ["?"]}]})
    assert batch.status_code == 422 and batch.json()["field"] == "requests.1.history"
    huge = b'{"history": [' + b'"1",' * (MAX_BODY_BYTES // 4) + b'"1"]}'
    answer = client.post("/v1/recommend", content=huge, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["field"] == "body"
    assert client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_history_limit_is_the_max_history_setting(client, qwen_recommender, heldout):
    """Histories up to max_history ids (default 10,000) are answered; one more id is a 422 naming the field,
    whose message names the setting; an app's own limit is what its OpenAPI schema and validation use."""
    rec = qwen_recommender
    users = [source_ids(rec, h) for h in heldout.histories[:40]]
    long = [item for user in users for item in user]
    long = (long * (DEFAULT_MAX_HISTORY // len(long) + 1))[:DEFAULT_MAX_HISTORY]
    answered = client.post("/v1/recommend", json={"history": long, "k": 5})
    assert answered.status_code == 200, answered.text
    assert len(ids_of(answered.json())) == 5 and not set(ids_of(answered.json())) & set(long)
    refused = client.post("/v1/recommend", json={"history": long + ["1"], "k": 5})
    assert refused.status_code == 422 and refused.json()["field"] == "history"
    assert f"max_history is {DEFAULT_MAX_HISTORY}" in refused.json()["detail"][0]["msg"]
    batch = client.post("/v1/recommend/batch", json={"requests": [{"history": ["1"]}, {"history": long + ["1"]}]})
    assert batch.status_code == 422 and batch.json()["field"] == "requests.1.history"
    app = create_app(rec, AppConfig(max_history=5))
    with TestClient(app) as local:
        assert local.post("/v1/recommend", json={"history": long[:5], "k": 3}).status_code == 200
        over = local.post("/v1/recommend", json={"history": long[:6], "k": 3})
        assert over.status_code == 422 and over.json()["field"] == "history"
        assert "max_history is 5" in over.json()["detail"][0]["msg"]
        over_batch = local.post("/v1/recommend/batch", json={"requests": [{"history": long[:5]}, {"history": long[:6]}]})
        assert over_batch.status_code == 422 and over_batch.json()["field"] == "requests.1.history"
        assert local.post("/v1/recommend", json={"history": long[:5], "k": "3"}).status_code == 422  # still strict
        assert local.post("/v1/recommend", json={"history": long[:5], "surprise": 1}).json()["field"] == "surprise"
        schema = local.get("/openapi.json").json()["components"]["schemas"]
        assert schema["RecommendRequest"]["properties"]["history"]["maxItems"] == 5
        assert "BatchRecommendRequest" in schema


def test_recsys_serve_max_history_setting_reaches_the_app(qwen_bundle):
    from recsys.errors import ConfigError
    from recsys.serving.commands import build_app, parse_serve_args

    assert parse_serve_args(["--bundle", "b"]).max_history == DEFAULT_MAX_HISTORY
    config = parse_serve_args(["--bundle", str(qwen_bundle), "--max-history", "7", "--catalogue", "sqlite://", "--threads", "0"])
    with pytest.raises(ConfigError, match="--max-history.*max_history: must be >= 1"):
        parse_serve_args(["--bundle", "b", "--max-history", "0"])
    app = build_app(config)
    try:
        assert app.state.config.max_history == 7
        with TestClient(app) as local:
            schema = local.get("/openapi.json").json()["components"]["schemas"]
            assert schema["RecommendRequest"]["properties"]["history"]["maxItems"] == 7
            assert local.post("/v1/recommend", json={"history": ["1"] * 8}).json()["field"] == "history"
    finally:
        app.state.recommender.close()


def test_batch_endpoint_equals_single_requests(client):
    requests = [{"history": ["1", "2"], "k": 5}, {"history": ["100"], "k": 3, "exclude_history": False}]
    batch = client.post("/v1/recommend/batch", json={"requests": requests}).json()["results"]
    singles = [client.post("/v1/recommend", json=r).json() for r in requests]
    assert [ids_of(b) for b in batch] == [ids_of(s) for s in singles]


def test_100_concurrent_requests_match_one_at_a_time(client, qwen_recommender, heldout):
    rec = qwen_recommender
    bodies = [{"history": source_ids(rec, h), "k": 10} for h in heldout.histories[:100]]
    sequential = [client.post("/v1/recommend", json=b).json() for b in bodies]

    async def concurrent():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*(http.post("/v1/recommend", json=b) for b in bodies))

    answers = client.portal.call(concurrent)
    assert all(a.status_code == 200 for a in answers)
    for one, many in zip(sequential, answers):
        assert ids_of(one) == ids_of(many.json())
        np.testing.assert_allclose([i["score"] for i in one["items"]], [i["score"] for i in many.json()["items"]], rtol=1e-4, atol=1e-4)
    metrics = client.get("/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("setrec_batch_size_bucket") and 'le="1.0"' in line]
    count = [line for line in metrics.splitlines() if line.startswith("setrec_batch_size_count")]
    assert float(sizes[0].split()[-1]) < float(count[0].split()[-1])  # some batches held more than one query


def test_admin_token_guards_item_insertion_and_new_items_are_retrievable(client, qwen_recommender):
    new = {"id": "cold-1", "text": "Toy Story. Year: 1995. Genres: Animation, Children's, Comedy", "title": "Toy Story (remaster)"}
    assert client.post("/v1/items", json=new).status_code == 401
    assert client.post("/v1/items", json=new, headers={"Authorization": "Bearer wrong"}).status_code == 401
    created = client.post("/v1/items", json=new, headers={"Authorization": f"Bearer {TOKEN}"})
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["added"] and not info["has_cf"] and info["index"] == qwen_recommender.num_items - 1
    assert client.get("/v1/items/cold-1").json() == info
    assert client.get("/v1/items/never-added").status_code == 404
    again = client.post("/v1/items", json=new, headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 409 and again.json()["field"] == "id"
    # Retrievable at once: it is the best candidate for itself, and ranks like the model's score_all.
    rec = qwen_recommender
    history = ["1", "cold-1"]
    body = client.post("/v1/recommend", json={"history": history, "k": 1000, "exclude_history": False}).json()
    assert len(body["items"]) == 1000
    pooled = client.post("/v1/recommend", json={"history": history, "k": 3, "exclude_history": False, "candidates": ["cold-1", "1", "2"]}).json()
    assert sorted(ids_of(pooled)) == ["1", "2", "cold-1"]
    from recsys.models.setrec import pad_histories

    rows = [rec._row[i] for i in history]
    scores = rec.model.score_all(pad_histories([rows], rec.model.bundle.max_len), rec.model.bundle.beta)[0]
    expected_score = float(scores[rec._row["cold-1"]])
    got = next(i["score"] for i in pooled["items"] if i["id"] == "cold-1")
    assert got == pytest.approx(expected_score, rel=1e-4, abs=1e-4)
    rank = int((scores > scores[rec._row["cold-1"]]).sum())
    if rank < 1000:  # the index finds it wherever the model ranks it
        assert ids_of(body)[rank] == "cold-1"
    only = client.post("/v1/recommend", json={"history": ["1"], "k": 1, "candidates": ["cold-1"]}).json()
    assert ids_of(only) == ["cold-1"] and only["items"][0]["title"] == "Toy Story (remaster)"


def test_catalogue_changes_are_disabled_without_a_token(qwen_recommender):
    app = create_app(qwen_recommender, AppConfig(admin_token=None))
    with TestClient(app) as local:
        answer = local.post("/v1/items", json={"id": "x-403", "text": "t"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 403
        assert local.get("/healthz").json()["status"] == "ok"
        ready = local.get("/readyz").json()
        assert ready["status"] == "ready" and ready["engine"] == "torch"


def test_full_queue_answers_503_with_retry_after(qwen_recommender):
    app = create_app(qwen_recommender, AppConfig(batcher=BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue=1)))
    with TestClient(app) as local:
        async def flood():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await asyncio.gather(*(http.post("/v1/recommend", json={"history": ["1", "2"], "k": 5}) for _ in range(20)))

        answers = local.portal.call(flood)
        codes = sorted(a.status_code for a in answers)
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
        refused = next(a for a in answers if a.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        metrics = local.get("/metrics").text
        assert 'setrec_errors_total{endpoint="/v1/recommend",kind="queue_full"}' in metrics
        assert local.post("/v1/recommend", json={"history": ["1"], "k": 2}).status_code == 200


def test_metrics_expose_requests_latency_batches_and_errors(client):
    client.post("/v1/recommend", json={"history": ["1"], "k": 2})
    client.post("/v1/recommend", json={"history": ["1"], "k": 0})
    text = client.get("/metrics").text
    for name in ("setrec_requests_total", "setrec_request_latency_seconds_bucket", "setrec_batch_size_bucket", "setrec_errors_total", "setrec_catalogue_items"):
        assert name in text, name
    assert 'setrec_errors_total{endpoint="/v1/recommend",kind="validation"}' in text
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert request["k"]["maximum"] == 1000 and request["history"]["maxItems"] == DEFAULT_MAX_HISTORY == 10_000
    assert json.dumps(schema)  # serialisable


# ---------------------------------------------------------------- strict types, ids, auth order, docs

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/recommend", {"history": ["1"], "k": "5"}, "k"),
        ("/v1/recommend", {"history": ["1"], "k": True}, "k"),
        ("/v1/recommend", {"history": ["1"], "k": 5.0}, "k"),
        ("/v1/recommend", {"history": ["1"], "exclude_history": "yes"}, "exclude_history"),
        ("/v1/recommend", {"history": ["1"], "exclude_history": 0}, "exclude_history"),
        ("/v1/recommend", {"history": "1"}, "history"),
        ("/v1/recommend", {"history": ["1"], "exclude": [2]}, "exclude.0"),
        ("/v1/recommend", {"history": ["1"], "candidates": [True]}, "candidates.0"),
        ("/v1/recommend/batch", {"requests": [{"history": ["1"], "k": "2"}]}, "requests.0.k"),
        ("/v1/items", {"id": 7, "text": "a film"}, "id"),
        ("/v1/items", {"id": "strict-1", "text": "a film", "title": 3}, "title"),
        ("/v1/items", {"id": "strict-2", "text": ["a film"]}, "text"),
    ],
)
def test_request_types_are_strict(client, path, body, field):
    answer = client.post(path, json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field


def test_an_id_with_slashes_can_be_read_back_and_removed(client):
    created = client.post("/v1/items", json={"id": "shop/42/a", "text": "Casablanca. Year: 1942. Genres: Drama, Romance"}, headers=AUTH)
    assert created.status_code == 201, created.text
    assert client.get("/v1/items/shop/42/a").json()["id"] == "shop/42/a"
    assert client.get("/v1/items/shop%2F42%2Fa").json()["id"] == "shop/42/a"
    removed = client.delete("/v1/items/shop/42/a", headers=AUTH)
    assert removed.status_code == 200 and removed.json()["available"] is False


def test_the_admin_token_is_checked_before_the_body_is_read(client):
    broken = b'{"id": "x", "text": '
    assert client.post("/v1/items", content=broken, headers={"content-type": "application/json"}).status_code == 401
    assert client.delete("/v1/items/1").status_code == 401
    assert client.delete("/v1/items/1", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    answer = client.post("/v1/items", content=broken, headers={"content-type": "application/json", **AUTH})
    assert answer.status_code == 422


def test_no_page_loads_scripts_from_a_cdn(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_a_removed_item_leaves_every_answer_but_stays_valid_in_histories(client, qwen_recommender):
    history = ["1", "50"]
    full = ids_of(client.post("/v1/recommend", json={"history": history, "k": 10}).json())
    gone = full[0]
    try:
        removed = client.delete(f"/v1/items/{gone}", headers=AUTH)
        assert removed.status_code == 200 and removed.json()["available"] is False and not removed.json()["added"]
        assert client.get(f"/v1/items/{gone}").json()["available"] is False
        assert client.delete(f"/v1/items/{gone}", headers=AUTH).status_code == 200  # idempotent
        after = ids_of(client.post("/v1/recommend", json={"history": history, "k": 10}).json())
        assert gone not in after and after[:9] == full[1:10]
        pooled = client.post("/v1/recommend", json={"history": history, "k": 5, "candidates": [gone, "2"]}).json()
        assert ids_of(pooled) == ["2"]
        in_history = client.post("/v1/recommend", json={"history": [gone, "1"], "k": 3})
        assert in_history.status_code == 200 and in_history.json()["unknown_items"] == []
        missing = client.delete("/v1/items/never-there", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["field"] == "item_id"
    finally:
        qwen_recommender.set_available(gone, True)


# ---------------------------------------------------------------- one overload answer

def assert_json_503(answer, metrics_text, kind):
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/json") and answer.headers["retry-after"] == "1"
    assert set(answer.json()) == {"detail", "field"}
    assert f'kind="{kind}"' in metrics_text, kind


def test_every_503_is_json_with_retry_after_and_counted(qwen_recommender, tmp_path):
    from recsys.serving.catalogue import Catalogue, CatalogueStore

    # too many requests in flight: the service's own limit (uvicorn's plain-text limit is not used)
    app = create_app(qwen_recommender, AppConfig(max_in_flight=2, batcher=BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue=1000)))
    with TestClient(app) as local:
        async def flood():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await asyncio.gather(*(http.post("/v1/recommend", json={"history": ["1", "2"], "k": 5}) for _ in range(12)))

        answers = local.portal.call(flood)
        assert {a.status_code for a in answers} == {200, 503}
        assert local.get("/healthz").status_code == 200  # ops endpoints are not limited
        assert_json_503(next(a for a in answers if a.status_code == 503), local.get("/metrics").text, "overloaded")
        # draining (SIGTERM): not ready, and every answer closes its connection
        app.state.config.drain.start()
        ready = local.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1" and ready.json()["status"] == "draining"
        assert local.post("/v1/recommend", json={"history": ["1"], "k": 2}).headers["connection"] == "close"
        assert 'kind="not_ready"' in local.get("/metrics").text
    # a stopped batch worker (shutting down)
    app = create_app(qwen_recommender, AppConfig())
    with TestClient(app) as local:
        local.portal.call(app.state.batcher.stop)
        assert_json_503(local.post("/v1/recommend", json={"history": ["1"], "k": 2}), local.get("/metrics").text, "queue_full")
        assert_json_503(local.post("/v1/recommend/batch", json={"requests": [{"history": ["1"]}]}), local.get("/metrics").text, "queue_full")
    # the catalogue store is down
    store = CatalogueStore(f"sqlite:///{tmp_path / 'c.db'}", "down")
    app = create_app(qwen_recommender, AppConfig(admin_token=TOKEN), Catalogue(qwen_recommender, store, poll_s=0))
    with TestClient(app) as local:
        (tmp_path / "c.db").unlink()
        store.engine.dispose()
        (tmp_path / "c.db").mkdir()  # not a database any more
        answer = local.post("/v1/items", json={"id": "down-1", "text": "t"}, headers=AUTH)
        assert_json_503(answer, local.get("/metrics").text, "store_unavailable")
        assert not qwen_recommender.has("down-1")  # nothing applied that was not committed
    # the text encoder is not on this server
    encoder_info = dict(qwen_recommender.text_encoder_info)
    qwen_recommender.text_encoder_info.update(path="/nowhere/encoder", fingerprint="0" * 16)
    qwen_recommender._text_encoder = None
    try:
        with TestClient(create_app(qwen_recommender, AppConfig(admin_token=TOKEN))) as local:
            answer = local.post("/v1/items", json={"id": "enc-1", "text": "t"}, headers=AUTH)
            assert_json_503(answer, local.get("/metrics").text, "no_text_encoder")
            assert "/nowhere" not in answer.text
    finally:
        qwen_recommender.text_encoder_info.clear()
        qwen_recommender.text_encoder_info.update(encoder_info)
        qwen_recommender._text_encoder = None
