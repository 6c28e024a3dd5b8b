"""DARE selection at inference on set-identifier bundles trained with recent histories (issue 17).

Command (numbers in benchmarks/RESULTS.md, "DARE (issue 17)"; about 3 minutes on ML-100K):
    .venv/bin/python benchmarks/history_selection.py runs/bench/ml-100k setrec benchmarks/results/history-selection-ml-100k.json

For each seed's bundle ``<work_dir>/models/<method>-seed<s>/bundle`` (trained by ``recsys benchmark
quality``), the valid split is scored with the most recent ``max_len`` items (``recent``) and with
``history.selection: dare`` at ``search_k`` 2, 5 and 10, the attention table being the CF artifact's
(``<work_dir>/cf``; its CF embeddings when the tokenizer's SASRec is not decoupled). The ``search_k`` with
the best valid NDCG@10 is kept per seed; the test split is then scored with it and with ``recent``,
and the paired bootstrap over users (seed-averaged per-user NDCG@10) gives dare minus recent.
The model is the same in both arms: this measures the selection rule at inference only, on a model
that never saw selected histories in training (the ``setrec-dare`` benchmark method trains with it).
"""
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from recsys.bundle import load_bundle
from recsys.pipelines.prepared import PreparedDataset
from recsys.evaluation.evaluate import evaluate
from recsys.evaluation.groups import ItemGroups
from recsys.evaluation.recommenders import ScoringRecommender
from recsys.evaluation.bootstrap import paired_bootstrap
from recsys.models.history_selection import HistoryConfig, HistorySelector, attention_table
from recsys.models.setrec import pad_histories
from recsys.tokenizers.cf import load_cf_artifact
root = sys.argv[1]; name = sys.argv[2] if len(sys.argv) > 2 else "setrec"
data = PreparedDataset.load(f"{root}/data"); groups = ItemGroups.from_dataset(data)
att, source = attention_table(load_cf_artifact(f"{root}/cf"))
out = {"attention_source": source, "seeds": {}}
per = {"recent": [], "dare": []}
for seed in (0, 1, 2):
    model = load_bundle(f"{root}/models/{name}-seed{seed}/bundle")
    table = model.item_table().detach(); beta, M = model.bundle.beta, model.bundle.max_len
    def rec(sel):
        return ScoringRecommender("x", lambda h: model.score_all(pad_histories(sel(h), M), beta, table=table), table.shape[0])
    res = {}
    for k in (0, 2, 5, 10):
        sel = HistorySelector(att, M, HistoryConfig("dare", k) if k else HistoryConfig(), source)
        valid = evaluate(rec(sel), data.eval_examples("valid"), groups, ks=(10, 20))
        res[k] = (valid.summary["all"]["ndcg@10"], sel)
    best = max((k for k in res if k), key=lambda k: res[k][0])
    row = {"valid_recent": res[0][0], **{f"valid_dare_k{k}": res[k][0] for k in res if k}, "chosen_k": best}
    for label, sel in (("recent", res[0][1]), ("dare", res[best][1])):
        test = evaluate(rec(sel), data.eval_examples("test"), groups, ks=(10, 20))
        row[f"test_{label}"] = test.summary["all"]["ndcg@10"]
        per[label].append(test.metric("ndcg@10", "all"))
    out["seeds"][seed] = row; print(seed, row, flush=True)
a, b = np.nanmean(np.stack(per["dare"]), 0), np.nanmean(np.stack(per["recent"]), 0)
out["paired_dare_minus_recent"] = paired_bootstrap(a, b)
out["test_recent"] = float(np.nanmean(b)); out["test_dare"] = float(np.nanmean(a))
print(json.dumps(out, indent=1, default=float))
with open(sys.argv[3] if len(sys.argv) > 3 else "benchmarks/results/history-selection.json", "w") as file:
    json.dump(out, file, indent=1, default=float)
