"""benchmarks/corpus_scale and its parts: the generated corpora, the process-tree monitor, the fit,
and a smoke run of the whole benchmark on a tiny corpus (the figures are in docs/benchmarks.md)."""

import json
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from benchmarks.corpus_gen import SentencePool, read_texts, write_corpus
from benchmarks.corpus_scale import exponent, merged, parse_size
from benchmarks.process_monitor import run_monitored
from benchmarks.read_scale import busiest_lane_cpu


@pytest.fixture(scope="module")
def pool(shared_data):
    reviews = pq.read_table(shared_data / "imdb" / "unsupervised.parquet", columns=["text"]).slice(0, 2000)
    return SentencePool.from_texts(reviews.column("text").to_pylist()), set(reviews.column("text").to_pylist())


def test_generated_corpora_are_new_documents_of_real_sentences_seeded(tmp_path, pool):
    sentences, reviews = pool
    written = write_corpus(sentences, tmp_path / "a", 300_000, seed=1)
    files = sorted((tmp_path / "a").iterdir())
    assert written["shards"] == len(files) == 4 and 300_000 <= written["bytes"] == sum(f.stat().st_size for f in files) < 400_000
    texts = [json.loads(line)["text"] for f in files for line in f.read_text().split("\n")[:-1]]  # (not splitlines: \u2028)
    assert len(texts) == written["documents"] and len(set(texts)) == len(texts)
    assert sum(text in reviews for text in texts) < 0.01 * len(texts)  # (one-sentence documents may repeat one)
    assert any("<br />" in text for text in texts)  # cleaning has work to do
    assert written["text_bytes"] == sum(len(t.encode()) for t in texts)
    write_corpus(sentences, tmp_path / "b", 300_000, seed=1)
    write_corpus(sentences, tmp_path / "c", 300_000, seed=2)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((tmp_path / "b").iterdir())]
    assert files[0].read_bytes() != sorted((tmp_path / "c").iterdir())[0].read_bytes()
    assert read_texts(tmp_path / "a", 10**9, part=1, parts=2) == [
        json.loads(line)["text"] for f in files[1::2] for line in f.read_text().split("\n")[:-1]]


def test_sizes_and_the_exponent_of_the_fit():
    assert [parse_size(s) for s in ("10M", "1G", "2GiB", "300K", "512")] == [10 << 20, 1 << 30, 2 << 30, 300 << 10, 512]
    rows = [{"corpus_bytes": size, "seconds": 3e-6 * size, "cpu_s": 1e-9 * size**1.2} for size in (1e7, 1e8, 1e9)]
    assert exponent(rows) == pytest.approx(1.0) and exponent(rows, "cpu_s") == pytest.approx(1.2)
    assert exponent(rows[:1]) is None


def test_reports_of_several_runs_are_merged_sorted_and_refitted():
    def row(size, processes, seconds):
        return {"corpus_bytes": size, "processes": processes, "seconds": seconds, "cpu_s": seconds}

    settings = {"block_size": 128, "heldout": 0.01, "num_proc": None, "tokenizer": "t"}
    first = {**settings, "rows": [row(10, 1, 1.0), row(10, 2, 0.5), row(100, 1, 10.0), row(1000, 2, 99.0)]}
    second = {**settings, "rows": [row(1000, 2, 50.0), row(100, 2, 5.0), row(1000, 1, 100.0)]}
    report = merged([first, second], ["a.json", "b.json"])
    assert [(r["corpus_bytes"], r["processes"], r["seconds"], r["report"]) for r in report["rows"]] == [
        (10, 1, 1.0, "a.json"), (10, 2, 0.5, "a.json"), (100, 1, 10.0, "a.json"), (100, 2, 5.0, "b.json"),
        (1000, 1, 100.0, "b.json"), (1000, 2, 50.0, "b.json")]  # the later report's row of a size and count wins
    assert report["exponents"]["1"]["seconds"] == pytest.approx(1.0) and report["exponents"]["2"]["cpu_s"] == pytest.approx(1.0)
    with pytest.raises(SystemExit, match="different block_size: a.json, b.json"):
        merged([first, {**second, "block_size": 64}], ["a.json", "b.json"])


def test_the_busiest_lane_is_the_main_process_and_each_pools_busiest_worker():
    workers = [{"role": "main worker", "cpu_s": cpu, "seen_s": seen}
               for cpu, seen in [(0.8, [1.0, 5.0]), (0.6, [1.0, 4.8]), (0.05, [1.2, 5.0]),  # the reading pool
                                 (0.2, [6.0, 7.0]), (0.3, [6.0, 7.2])]]  # the filter's
    processes = [{"role": "main", "cpu_s": 9.0, "seen_s": [0.0, 8.0]}, *workers]
    assert busiest_lane_cpu(1.0, 1.95, processes) == pytest.approx(1.0 + 0.8 + 0.3)  # sampled == exact
    assert busiest_lane_cpu(1.0, 3.9, processes) == pytest.approx(1.0 + 2 * (0.8 + 0.3))  # sampled short: scaled
    assert busiest_lane_cpu(2.5, 0.0, processes[:1]) == 2.5  # one reader: the main process alone


def test_the_monitor_sees_every_process_of_the_tree_and_its_anonymous_memory(tmp_path):
    child = textwrap.dedent("""
        import multiprocessing, time
        def hold(megabytes):
            block = bytearray(megabytes << 20)
            time.sleep(1.5)
        if __name__ == "__main__":
            held = bytearray(60 << 20)  # held until the worker is done, however late a loaded machine starts it
            worker = multiprocessing.get_context("spawn").Process(target=hold, args=(150,))
            worker.start()
            worker.join()
    """)
    (tmp_path / "tree.py").write_text(child)
    code, wall, report, _ = run_monitored([sys.executable, str(tmp_path / "tree.py")], env=None, interval=0.1)
    assert code == 0 and wall > 1.5
    roles = {p["role"]: p for p in report["processes"]}
    assert roles["main"]["peak_anon_mib"] >= 60
    assert max(p["peak_anon_mib"] for p in report["processes"] if p["role"] != "main") >= 150
    assert report["peak_anon_mib"] >= 150 and report["peak_total_anon_mib"] >= 210
    worker = max((p for p in report["processes"] if p["role"] != "main"), key=lambda p: p["peak_anon_mib"])
    assert roles["main"]["seen_s"][0] <= worker["seen_s"][0] < worker["seen_s"][1] <= roles["main"]["seen_s"][1]


@pytest.mark.slow  # ~15 s idle, ~50 s on a loaded machine: four short subprocesses
def test_the_benchmark_runs_end_to_end_on_a_tiny_corpus(tmp_path, tiny_encoder_dir, capsys):
    from benchmarks.corpus_scale import main

    report = main(["--sizes", "200K", "--processes", "1", "--scratch", str(tmp_path / "scratch"), "--tokenizer",
                   str(tiny_encoder_dir), "--ceiling-bytes", "100K", "--block-size", "32", "--pool-reviews", "2000", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    assert row["input_ids_type"].startswith("List(Value('uint16')")
    assert row["cache_per_corpus_byte"] > 0 and row["second_speedup"] > 1 and row["tokens"] > 0
    assert row["memory"]["peak_rss_mib"] > 0 and row["ceiling"]["before"]["bytes_per_s"] > 0
    assert set(row["phases"]) == {"read", "split", "heldout", "train"}
    assert "| 0 MiB | 1 | " in capsys.readouterr().out  # the table
    assert not list((tmp_path / "scratch").glob("corpus-*")) and not list((tmp_path / "scratch").glob("cache-*"))
