"""Benchmark ``recsys data prepare`` (Polars) against the same steps written plainly in pandas.

Command (10M interactions, 1M items, 200k users; about 2 minutes on a 2-core machine):
    nice -n 10 .venv/bin/python benchmarks/pipeline.py
    .venv/bin/python benchmarks/pipeline.py --interactions 1000000   # smaller

Scale run (100M interactions, 10M items, 2M users, the same generator; the Polars side only,
its outputs checked against the rules of the 10M path on a sample of users; written under
``scale_100m`` in the results JSON, the other keys kept):
    nice -n 19 .venv/bin/python benchmarks/pipeline.py --interactions 100000000 --skip-pandas --key scale_100m

A synthetic source is generated first (power-law item popularity, skewed user activity,
day-resolution timestamps so that ties are common, and a share of exact duplicate events):
``interactions.csv`` with ``user_id,item_id,timestamp``. Then each side runs in its own
subprocess, reading that CSV and writing a prepared dataset:

- polars: the library itself, ``recsys.pipelines.prepare.prepare`` (``--kcore 5 --split loo
  --on-bad-rows drop``), row checks included;
- pandas: the reference, the same steps written plainly: drop duplicate events, iterative
  k-core, contiguous ids in id order, chronological order with the file line as the stable
  tie-break, leave-one-out split, Parquet outputs.

Each side is timed inside its subprocess (read to written), its peak RSS is the child's
``ru_maxrss`` (``os.wait4``), and the two interaction tables are checked equal row by row.
Results go to ``benchmarks/results/pipeline.json`` (keys this run does not write are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline.json"
KCORE = 5
GIB = 1024**3


def generate(path: Path, interactions: int, users: int, items: int, seed: int = 0, string_ids: bool = False) -> dict:
    """Write a synthetic ``interactions.csv`` and return what it holds.

    Item popularity follows a power law (p(rank r) ~ r^-1.05, ranks shuffled over ids), user
    activity a milder one (r^-0.6); timestamps are whole days over two years (many ties
    within a user), and 0.5% of the rows repeat an earlier row exactly (duplicate events).

    Args:
        path: the CSV to write.
        interactions, users, items: sizes of the source.
        seed: random seed.
        string_ids: write ids as text ("u17", "i42") instead of integers.

    Example:
        >>> generate(Path("/tmp/bench/interactions.csv"), 100_000, 2_000, 10_000)
    """
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)

    def power_law(n: int, exponent: float, size: int) -> np.ndarray:
        weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
        cdf = np.cumsum(weights)
        ranks = np.searchsorted(cdf, rng.random(size) * cdf[-1])
        return rng.permutation(n)[np.minimum(ranks, n - 1)]

    n_dup = interactions // 200
    n = interactions - n_dup
    user = power_law(users, 0.6, n) + 1
    item = power_law(items, 1.05, n) + 1
    day = rng.integers(0, 730, n)
    ts = 1_500_000_000 + day * 86_400
    dup = rng.integers(0, n, n_dup)
    position = np.sort(rng.integers(0, n + 1, n_dup))  # where the copies go: after random rows
    order = np.argsort(np.concatenate([np.arange(n) * 2 + 1, position * 2]), kind="stable")
    source = np.concatenate([np.arange(n), dup])[order]
    # A copy placed before its original would make the original the duplicate; both are fine.
    frame = pl.DataFrame({"user_id": user[source], "item_id": item[source], "timestamp": ts[source]})
    if string_ids:
        frame = frame.with_columns(pl.format("u{}", "user_id").alias("user_id"), pl.format("i{}", "item_id").alias("item_id"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return {
        "interactions": frame.height,
        "users_generated": users,
        "items_generated": items,
        "duplicate_rows_injected": int(n_dup),
        "csv_bytes": path.stat().st_size,
    }


def run_polars(source: Path, out: Path) -> dict:
    """The library path: ``recsys data prepare`` as a function call."""
    from recsys.pipelines.prepare import PrepareConfig, prepare

    started = time.perf_counter()
    manifest = prepare(PrepareConfig(source=str(source), out=str(out), kcore=KCORE, split="loo", on_bad_rows="drop"))
    seconds = time.perf_counter() - started
    counts = manifest["counts"]
    return {"seconds": seconds, "rows_kept": counts["rows_kept"], "rows_dropped": counts["rows_dropped"]}


def run_pandas(source: Path, out: Path) -> dict:
    """The reference: the same steps, plainly in pandas (one statement per step)."""
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    df = pd.read_csv(source)  # row order = file line order, the tie-break
    read_rows = len(df)
    df = df.drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
    duplicates = read_rows - len(df)
    before_kcore = len(df)
    while True:
        user_count = df.groupby("user_id")["item_id"].transform("size")
        item_count = df.groupby("item_id")["user_id"].transform("size")
        keep = (user_count >= KCORE) & (item_count >= KCORE)
        if keep.all():
            break
        df = df[keep]
    kcore_dropped = before_kcore - len(df)
    df = df.assign(
        user_idx=(df["user_id"].rank(method="dense") - 1).astype("int32"),
        item_idx=(df["item_id"].rank(method="dense") - 1).astype("int32"),
    )
    df = df.sort_values(["user_idx", "timestamp"], kind="stable")
    from_end = df.groupby("user_idx").cumcount(ascending=False).to_numpy()
    length = df.groupby("user_idx")["item_idx"].transform("size").to_numpy()
    split = np.where((length >= 3) & (from_end == 0), "test", np.where((length >= 3) & (from_end == 1), "valid", "train"))
    interactions = pd.DataFrame(
        {
            "user_idx": df["user_idx"].to_numpy(),
            "item_idx": df["item_idx"].to_numpy(),
            "ts": df["timestamp"].to_numpy().astype("int64"),
            "split": pd.Categorical(split, categories=["train", "valid", "test"]),
        }
    )
    items = df.drop_duplicates("item_idx")[["item_idx", "item_id"]].sort_values("item_idx")
    train_items = set(interactions.loc[interactions["split"] == "train", "item_idx"])
    items = items.assign(item_id=items["item_id"].astype(str), text="", is_cold=~items["item_idx"].isin(train_items))
    users = df.drop_duplicates("user_idx")[["user_idx", "user_id"]].sort_values("user_idx")
    users = users.assign(user_id=users["user_id"].astype(str))
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(out / "interactions.parquet", index=False)
    items.to_parquet(out / "items.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows_kept": len(interactions),
        "rows_dropped": {"duplicate_event": duplicates, "kcore": kcore_dropped},
    }


def run_side(side: str, source: Path, out: Path) -> dict:
    """Run one side in a subprocess; return its report plus peak RSS and wall time."""
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--source", str(source), "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"the {side} side failed with exit status {process.returncode}")
    report = json.loads(output.strip().splitlines()[-1])
    report["peak_rss_gib"] = usage.ru_maxrss * 1024 / GIB  # ru_maxrss is KiB on Linux
    report["process_seconds"] = wall
    report["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the whole child, start-up included
    return report


def compare(polars_out: Path, pandas_out: Path) -> bool:
    """True when both sides wrote the same interactions, items and users (ids and order)."""
    import polars as pl

    for name, columns in (
        ("interactions.parquet", ["user_idx", "item_idx", "ts", "split"]),
        ("items.parquet", ["item_idx", "item_id", "is_cold"]),
        ("users.parquet", ["user_idx", "user_id"]),
    ):
        a = pl.read_parquet(polars_out / name, columns=columns).with_columns(pl.col(pl.Enum, pl.Categorical).cast(pl.String))
        b = pl.read_parquet(pandas_out / name, columns=columns).with_columns(pl.col(pl.Enum, pl.Categorical).cast(pl.String))
        b = b.cast(a.schema)
        if not a.equals(b):
            print(f"{name} differs between the sides", file=sys.stderr)
            return False
    return True


def check_sample(source: Path, out: Path, kcore: int, users: int = 200, seed: int = 0) -> dict:
    """Check a prepared output against the rules of the 10M path, on the whole table and on a sample of users.

    On every row: each user's events in time order, no exact duplicate event, every kept user
    and item with at least ``kcore`` events, leave-one-out splits (last event test, second
    last valid, users with fewer than three events all train), contiguous ids. On ``users``
    sampled users: the kept sequence equals the one recomputed from the source (first copy of
    each duplicate, events of kept items only, stable order by time then file line).

    Returns:
        ``{"rules": {name: bool}, "sampled_users": n, "sample_equal": bool}``.
    """
    import numpy as np
    import polars as pl

    inter = pl.scan_parquet(out / "interactions.parquet")
    rules = {}
    per_user = inter.with_row_index("row").group_by("user_idx").agg(
        pl.col("ts").diff().min().alias("step"), pl.len().alias("n"),
        pl.col("split").cast(pl.String).last().alias("last"),
        pl.col("split").cast(pl.String).get(-2, null_on_oob=True).alias("second"),
        (pl.col("split").cast(pl.String).head(pl.len() - 2) != "train").sum().alias("early_not_train"),
        (pl.col("split").cast(pl.String) != "train").sum().alias("not_train"),
    ).collect(engine="streaming")
    rules["time_order"] = bool((per_user["step"].fill_null(0) >= 0).all())
    long = per_user.filter(pl.col("n") >= 3)
    rules["loo_splits"] = bool((long["last"] == "test").all() and (long["second"] == "valid").all()
                               and (long["early_not_train"] == 0).all()
                               and (per_user.filter(pl.col("n") < 3)["not_train"] == 0).all())
    rules["kcore_users"] = bool((per_user["n"] >= kcore).all())
    item_n = inter.group_by("item_idx").len().collect(engine="streaming")
    rules["kcore_items"] = bool((item_n["len"] >= kcore).all())
    rules["no_duplicate_events"] = inter.select(pl.struct("user_idx", "item_idx", "ts").is_duplicated().any()).collect().item() is False
    n_users, n_items = per_user.height, item_n.height
    rules["contiguous_ids"] = bool(per_user["user_idx"].max() == n_users - 1 and item_n["item_idx"].max() == n_items - 1)
    del per_user, item_n

    users_table = pl.read_parquet(out / "users.parquet")
    items_table = pl.read_parquet(out / "items.parquet", columns=["item_idx", "item_id"])
    rng = np.random.default_rng(seed)
    sample = users_table[np.sort(rng.choice(users_table.height, size=min(users, users_table.height), replace=False))]
    got = (inter.filter(pl.col("user_idx").is_in(sample["user_idx"].implode())).collect()
           .join(sample, on="user_idx", maintain_order="left").join(items_table, on="item_idx", maintain_order="left")
           .group_by("user_id", maintain_order=True).agg("item_id", "ts"))
    raw = (pl.scan_csv(source, schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
                       row_index_name="line")
           .filter(pl.col("user_id").is_in(sample["user_id"].implode())).collect(engine="streaming"))
    expected = (raw.filter(pl.struct("user_id", "item_id", "timestamp").is_first_distinct())
                .filter(pl.col("item_id").is_in(items_table["item_id"].implode()))
                .sort(["user_id", "timestamp", "line"])
                .group_by("user_id", maintain_order=True).agg("item_id", pl.col("timestamp").alias("ts")))
    joined = got.join(expected, on="user_id", how="full", suffix="_expected")
    equal = bool(joined.height == sample.height
                 and (joined["item_id"] == joined["item_id_expected"]).all() and (joined["ts"] == joined["ts_expected"]).all())
    return {"rules": rules, "sampled_users": sample.height, "sample_equal": equal}


def load_note() -> str:
    """The 1-minute load average and the core count, to read the timings against."""
    one, five, _ = os.getloadavg()
    note = f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"
    return note + (" (above 2.5: the wall-clock times include waiting for a CPU)" if one > 2.5 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000, help="rows to generate (default 10M)")
    parser.add_argument("--users", type=int, default=None, help="users (default interactions / 50)")
    parser.add_argument("--items", type=int, default=None, help="items (default interactions / 10)")
    parser.add_argument("--string-ids", action="store_true", help="text ids (u17, i42) instead of integers")
    parser.add_argument("--workdir", default=None, help="where the source and outputs go (default: a temp dir)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON output (default benchmarks/results/pipeline.json)")
    parser.add_argument("--skip-pandas", action="store_true", help="run the Polars side only (the pandas reference stays at 10M)")
    parser.add_argument("--key", default=None,
                        help="write this run under KEY in the results JSON (e.g. scale_100m), keeping every other key")
    parser.add_argument("--side", choices=("polars", "pandas"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # child process: run one side and print its report
        run = run_polars if args.side == "polars" else run_pandas
        print(json.dumps(run(Path(args.source), Path(args.out))))
        return

    users = args.users or max(args.interactions // 50, 10)
    items = args.items or max(args.interactions // 10, 10)
    with tempfile.TemporaryDirectory(prefix="setrec-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        source = work / "interactions.csv"
        started = time.perf_counter()
        data = generate(source, args.interactions, users, items, string_ids=args.string_ids)
        print(f"generated {data['interactions']:,} interactions in {time.perf_counter() - started:.1f} s ({load_note()})", flush=True)
        load_before = load_note()
        polars_report = run_side("polars", source, work / "polars")
        load_after = load_note()
        print(f"polars: {polars_report['seconds']:.2f} s, peak RSS {polars_report['peak_rss_gib']:.2f} GiB ({load_after})", flush=True)
        if args.skip_pandas:
            check = check_sample(source, work / "polars", KCORE)
            print(f"sample check: {check}", flush=True)
            result = {
                "seconds": round(polars_report["seconds"], 3),
                "peak_rss_gib": round(polars_report["peak_rss_gib"], 3),
                "cpu_seconds": round(polars_report["cpu_seconds"], 3),
                "process_seconds": round(polars_report["process_seconds"], 3),
                "interactions": data["interactions"], "users_generated": users, "items_generated": items,
                "csv_bytes": data["csv_bytes"], "kcore": KCORE,
                "rows_kept": polars_report["rows_kept"], "rows_dropped": polars_report["rows_dropped"],
                "outputs_checked": check,
                "load_before": load_before, "load_after": load_after,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
                "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
            }
            _write_results(Path(args.results), result, args.key)
            print(json.dumps(result, indent=2))
            if not all(check["rules"].values()) or not check["sample_equal"]:
                raise SystemExit("the outputs break a rule of the 10M path (see outputs_checked)")
            return
        pandas_report = run_side("pandas", source, work / "pandas")
        print(f"pandas: {pandas_report['seconds']:.2f} s, peak RSS {pandas_report['peak_rss_gib']:.2f} GiB", flush=True)
        equal = compare(work / "polars", work / "pandas")

    result = {
        "interactions": data["interactions"],
        "users_generated": users,
        "items_generated": items,
        "duplicate_rows_injected": data["duplicate_rows_injected"],
        "string_ids": args.string_ids,
        "kcore": KCORE,
        "rows_kept": polars_report["rows_kept"],
        "polars_rows_dropped": polars_report["rows_dropped"],
        "pandas_rows_dropped": pandas_report["rows_dropped"],
        "outputs_equal": equal,
        "polars_seconds": round(polars_report["seconds"], 3),
        "pandas_seconds": round(pandas_report["seconds"], 3),
        "speedup_vs_pandas": round(pandas_report["seconds"] / polars_report["seconds"], 2),
        "polars_peak_rss_gib": round(polars_report["peak_rss_gib"], 3),
        "pandas_peak_rss_gib": round(pandas_report["peak_rss_gib"], 3),
        "polars_cpu_seconds": round(polars_report["cpu_seconds"], 3),
        "pandas_cpu_seconds": round(pandas_report["cpu_seconds"], 3),
        "polars_process_seconds": round(polars_report["process_seconds"], 3),
        "pandas_process_seconds": round(pandas_report["process_seconds"], 3),
        "load_before": load_before,
        "load_after": load_note(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
    }
    _write_results(Path(args.results), result, args.key)
    print(json.dumps(result, indent=2))
    if not equal:
        raise SystemExit("the Polars and pandas outputs differ")


def _write_results(path: Path, result: dict, key: str | None) -> None:
    """Write ``result`` into the JSON at ``path`` (under ``key`` when given), keeping the keys it does not write."""
    existing = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**existing, key: result} if key else {**existing, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
