"""Stage-2 data: loading and checking labelled splits, stratified splits, batching, padding."""

from collections import Counter

import pandas as pd
import pytest

from classify.data import (
    Collator,
    DataError,
    LabelledSetConfig,
    LengthBucketBatchSampler,
    ReviewDataset,
    load_labelled,
    stratified_split,
    stratified_subset,
)


# --- loading and checking ------------------------------------------------------------------


def test_imdb_subset_is_seeded_and_stratified(shared_data):
    config = LabelledSetConfig(path=str(shared_data / "imdb"), split="test", max_samples=200)
    first, again = load_labelled(config, seed=3), load_labelled(config, seed=3)
    assert len(first) == 200 and first.total == 25_000
    assert Counter(first.labels) == {0: 100, 1: 100}  # the file is sorted neg-then-pos: a head would be all 0
    assert first.texts == again.texts
    assert first.where.endswith("imdb/test.parquet")
    assert load_labelled(config, seed=4).texts != first.texts


def test_sst2_sentence_column(shared_data):
    sst2 = load_labelled(LabelledSetConfig(path=str(shared_data / "sst2"), split="validation", text_column="sentence"))
    assert len(sst2) == 872 and Counter(sst2.labels) == {0: 428, 1: 444}


def test_missing_column_names_file_and_column(tmp_path):
    pd.DataFrame({"review": ["good", "bad"], "label": [1, 0]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError) as error:
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="train"))
    message = str(error.value)
    assert "train.parquet" in message and "'text'" in message


@pytest.mark.parametrize("labels, shown", [([0, 2, 1], "row 1 is 2"), ([1, -1, 0], "row 1 is -1"), (["pos", "neg", "pos"], "row 0 is 'pos'")])
def test_labels_outside_a_binary_task_name_file_column_and_row(tmp_path, labels, shown):
    """An evaluation set read for a binary model: every label must be 0/1 (or one of its names)."""
    from classify.labels import BINARY_DEFAULT, LabelSpace

    pd.DataFrame({"text": ["a", "b", "c"], "sentiment": labels}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError) as error:
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="test", label_column="sentiment"),
                      space=LabelSpace(BINARY_DEFAULT, "the model"))
    message = str(error.value)
    assert "test.parquet" in message and "'sentiment'" in message and shown in message


def test_missing_label_and_jsonl(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "meh", "label": null}\n')
    with pytest.raises(DataError, match=r"train\.jsonl.*'label'.*row 1 is missing"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="train"))


def test_nan_label_names_its_row(tmp_path):
    """A NaN makes the whole column float: the NaN's row is the problem, not row 0's 1.0."""
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1.0, 0.0, float("nan"), 1.0]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"train\.parquet.*'label'.*row 2 is missing \(empty or NaN\); 1 of 4 rows"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="train"))
    (tmp_path / "test.csv").write_text("text,label\na,1\nb,\nc,0\nd,nan\n")  # an empty cell and a "nan"
    with pytest.raises(DataError, match=r"test\.csv.*row 1 is missing \(empty or NaN\); 2 of 4 rows"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="test"))


def test_float_labels_that_are_0_and_1_are_accepted(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, 0.0, 1.0]}).to_parquet(tmp_path / "train.parquet")
    labelled = load_labelled(LabelledSetConfig(path=str(tmp_path), split="train"))
    assert labelled.labels == [1, 0, 1] and all(type(v) is int for v in labelled.labels)
    pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.5]}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError, match=r"row 1 is 0\.5"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="test"))


def test_missing_split_file(tmp_path):
    with pytest.raises(DataError, match="no file for split 'validation'"):
        load_labelled(LabelledSetConfig(path=str(tmp_path), split="validation"))


# --- splits --------------------------------------------------------------------------------


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = [0] * 300 + [1] * 100
    rest, held = stratified_split(labels, 0.1, seed=1)
    assert len(held) == 40 and len(rest) == 360 and not set(rest) & set(held)
    assert Counter(labels[i] for i in held) == {0: 30, 1: 10}
    assert stratified_split(labels, 40, seed=1) == (rest, held)  # a count works like the fraction
    assert stratified_split(labels, 40, seed=2)[1] != held
    with pytest.raises(DataError, match="validation_size"):
        stratified_split(labels, 399, seed=1)


def test_stratified_subset():
    labels = [0] * 500 + [1] * 500
    subset = stratified_subset(labels, 100, seed=0)
    assert len(subset) == 100 and Counter(labels[i] for i in subset) == {0: 50, 1: 50}
    assert subset == sorted(subset) == stratified_subset(labels, 100, seed=0)
    assert stratified_subset(labels, 5000, seed=0) == list(range(1000))


# --- batching ------------------------------------------------------------------------------


def _lengths(n=203, seed=0):
    import random

    rng = random.Random(seed)
    return [rng.randint(5, 500) for _ in range(n)]


def test_bucket_sampler_is_a_function_of_seed_and_epoch():
    lengths = _lengths()
    sampler = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=7, bucket_batches=4)
    sampler.set_epoch(0)
    epoch0 = sampler.batches()
    sampler.set_epoch(1)
    epoch1 = sampler.batches()
    sampler.set_epoch(0)
    assert sampler.batches() == epoch0  # recomputed identically (resume, other processes)
    assert epoch1 != epoch0
    other = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=8, bucket_batches=4)
    assert other.batches() != epoch0
    for batches in (epoch0, epoch1):
        assert len(batches) == len(sampler) == 13
        assert sorted(i for b in batches for i in b) == list(range(203))  # every row once
        assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 203 % 16  # remainder last


def test_bucketing_cuts_padding_but_keeps_batch_order_shuffled():
    lengths = _lengths(2000)
    bucketed = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=0, bucket_batches=50).batches()
    plain = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=0, group_by_length=False).batches()

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(bucketed) < 0.75 * padded(plain)
    longest = [max(lengths[i] for i in b) for b in bucketed[:-1]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # not a sorted epoch


def test_eval_sampler_is_sorted_and_unshuffled():
    lengths = _lengths(37)
    batches = LengthBucketBatchSampler(lengths, 8, shuffle=False).batches()
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(37))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [8, 8, 8, 8, 5]


def test_review_dataset_and_padding_to_multiple_of_8(tiny_tokenizer):
    texts = ["a great movie <br /><br /> loved it", "bad", "the story was " + "very " * 200 + "boring"]
    dataset = ReviewDataset(texts, [1, 0, 0], tiny_tokenizer, max_length=64, truncation="head+tail", head_tokens=16)
    assert max(dataset.lengths) == 64
    assert all(ids[0] == tiny_tokenizer.cls_token_id and ids[-1] == tiny_tokenizer.sep_token_id for ids in dataset.ids)
    assert "<" not in tiny_tokenizer.decode(dataset.ids[0])  # cleaned like stage 1 and inference
    batch = Collator(tiny_tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= dataset.lengths[0]
    assert batch["attention_mask"].sum(1).tolist() == dataset.lengths[:2]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]


@pytest.mark.parametrize("truncation", ["head", "head+tail", "windows"])
def test_review_dataset_knows_each_whole_reviews_length_without_tokenizing_again(tiny_tokenizer, shared_data, truncation):
    from classify.model import clean_text

    texts = load_labelled(LabelledSetConfig(path=str(shared_data / "imdb"), split="test", max_samples=24), seed=0).texts
    texts += ["", "<br /><br />"]  # empty after cleaning: the special tokens alone
    dataset = ReviewDataset(texts, [0] * len(texts), tiny_tokenizer, 64, truncation, head_tokens=16, window_stride=16)
    whole = [len(tiny_tokenizer(clean_text(t), add_special_tokens=True, truncation=False)["input_ids"]) for t in texts]
    assert dataset.review_tokens.tolist() == whole
    assert max(whole) > 64 and max(dataset.lengths) == 64  # the inputs are cut; the counts are not


def test_bucketed_batches_are_dealt_in_similar_length_runs_per_process():
    lengths = _lengths(2000)
    sampler = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=0, bucket_batches=50, processes=2)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(2000))
    longest = [max(lengths[i] for i in b) for b in batches]
    pairs = [abs(longest[i] - longest[i + 1]) for i in range(0, len(longest) - 1, 2)]  # one step's two batches
    across = [abs(longest[i + 1] - longest[i + 2]) for i in range(0, len(longest) - 2, 2)]
    assert sum(pairs) < 0.2 * sum(across)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_balanced_batches_hold_the_classes_in_proportion(group_by_length):
    lengths = _lengths(1000, seed=3)
    labels = [int(i % 4 == 0) for i in range(1000)]  # 25 % positive
    sampler = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=1, bucket_batches=10,
                                       group_by_length=group_by_length, labels=labels)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000))
    # 16 x 25 % = 4 positives, +-1 where a bucket's share differs from the data's
    assert {sum(labels[i] for i in b) for b in batches[:-1]} <= {3, 4, 5}
    unbalanced = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=1, bucket_batches=10, group_by_length=group_by_length)
    counts = {sum(labels[i] for i in b) for b in unbalanced.batches()[:-1]}
    assert min(counts) <= 1 and max(counts) >= 7
    if group_by_length:  # still length-bucketed: far less padding than random batches
        plain = LengthBucketBatchSampler(lengths, 16, shuffle=True, seed=1, group_by_length=False, labels=labels).batches()
        padded = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
        assert padded(batches) < 0.8 * padded(plain)
    sampler.set_epoch(1)
    assert sampler.batches() != batches
