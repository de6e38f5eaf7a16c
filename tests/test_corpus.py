"""Every supported input form gives the same packed blocks; the cache is keyed by content."""
import json

import datasets
import pytest
import torch
from conftest import FIXTURES

from rtune_ds.data.corpus import load_texts, packed_blocks, split_blocks
from rtune_ds.data.tokenizer import tokenizer_hash, train_tokenizer
from rtune_ds.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer([str(FIXTURES / "general.jsonl")], "text", 1000,
                           tmp_path_factory.mktemp("tok") / "tok")


def test_text_jsonl_parquet_and_saved_dir_agree(tmp_path, tokenizer):
    texts = [json.loads(line)["text"] for line in (FIXTURES / "general.jsonl").read_text().splitlines()]
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    ds = datasets.Dataset.from_dict({"text": texts})
    ds.to_parquet(str(tmp_path / "c.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    blocks = [packed_blocks(str(p), tokenizer, tokenizer_hash(tokenizer), 32, "text", tmp_path / "cache")
              for p in (FIXTURES / "general.jsonl", tmp_path / "c.txt", tmp_path / "c.parquet",
                        tmp_path / "saved")]
    assert blocks[0].shape[1] == 32 and len(blocks[0]) > 100
    for other in blocks[1:]:
        assert torch.equal(blocks[0], other)
    eos = (blocks[0] == tokenizer.eos_token_id).sum().item()
    assert eos >= len(texts) - 2  # documents are separated by EOS (the tail block is dropped)


def test_changed_file_is_repacked(tmp_path, tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": "alpha beta gamma " * 40}) for _ in range(5)))
    first = packed_blocks(str(path), tokenizer, tokenizer_hash(tokenizer), 16, "text", tmp_path)
    path.write_text("\n".join(json.dumps({"text": "delta " * 40}) for _ in range(5)))
    second = packed_blocks(str(path), tokenizer, tokenizer_hash(tokenizer), 16, "text", tmp_path)
    assert not torch.equal(first[:1], second[:1])


def test_missing_text_column_names_it(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"body": "hello there"}) + "\n")
    with pytest.raises(ConfigError, match="no 'text' column"):
        load_texts(path, "text")
    assert len(load_texts(path, "body")) == 1


def test_split_is_fixed_and_disjoint():
    blocks = torch.arange(400).view(100, 4)
    train, held = split_blocks(blocks, 0.1)
    again_train, again_held = split_blocks(blocks, 0.1)
    assert torch.equal(held, again_held) and len(held) == 10 and len(train) == 90
    assert not set(held[:, 0].tolist()) & set(train[:, 0].tolist())


def test_a_changed_packing_rule_version_misses_the_cache(tmp_path, tokenizer, monkeypatch):
    from rtune_ds.data import corpus

    path, calls, real_pack = FIXTURES / "general.jsonl", [], corpus.pack
    monkeypatch.setattr(corpus, "pack", lambda *a: calls.append(1) or real_pack(*a))
    for version in (corpus.PACKING_RULE_VERSION, corpus.PACKING_RULE_VERSION, 99):
        monkeypatch.setattr(corpus, "PACKING_RULE_VERSION", version)
        packed_blocks(str(path), tokenizer, tokenizer_hash(tokenizer), 32, "text", tmp_path)
    assert len(calls) == 2  # the second call reads the cache; another rule version repacks
    assert len(list(tmp_path.iterdir())) == 2 and not list(tmp_path.glob(".tmp*"))
