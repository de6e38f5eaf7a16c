"""Real BERT tokenizers have no EOS and carry padding/truncation settings in tokenizer.json:
packing follows their [CLS] ... [SEP] convention, and the tokenizer hash ignores those settings."""
import hashlib
import json
import shutil

import datasets
import pytest
from conftest import FIXTURES, wordpiece_tokenizer

from rtune_ds.config.schema import DataConfig, Source
from rtune_ds.data import corpus
from rtune_ds.data.corpus import load_texts, pack, packed_blocks
from rtune_ds.data.lm_data import build_lm_data
from rtune_ds.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer
from rtune_ds.errors import ConfigError

SEQ_LEN = 32


@pytest.fixture(scope="module")
def wp_dir(tmp_path_factory):
    return wordpiece_tokenizer(tmp_path_factory.mktemp("wp") / "tok")


@pytest.fixture(scope="module")
def wp(wp_dir):
    return load_tokenizer(wp_dir)


def doc_ids(tokenizer, path=FIXTURES / "general.jsonl"):
    texts = list(load_texts(path, "text")["text"])
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_the_helper_saves_a_tokenizer_as_released_bert_ones_are(wp_dir, wp):
    assert {p.name for p in wp_dir.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                  "special_tokens_map.json", "vocab.txt"}
    saved = json.loads((wp_dir / "tokenizer.json").read_text())
    assert saved["truncation"]["max_length"] == 128
    assert saved["padding"]["strategy"] == {"Fixed": 128}
    assert wp.eos_token_id is None and wp.bos_token_id is None and wp.pad_token_id == 0
    framed = wp.convert_ids_to_tokens(wp("Hello World")["input_ids"])
    assert framed[0] == "[CLS]" and framed[-1] == "[SEP]" and "[PAD]" not in framed
    assert (wp_dir / "vocab.txt").read_text().splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]",
                                                                   "[SEP]", "[MASK]"]
    assert wordpiece_tokenizer(wp_dir) == wp_dir  # cached: an existing dir is kept


def test_blocks_are_framed_cls_sep_and_documents_separated_by_sep(tmp_path, wp):
    blocks = packed_blocks(str(FIXTURES / "general.jsonl"), wp, tokenizer_hash(wp), SEQ_LEN,
                           "text", tmp_path)
    cls, sep = wp.cls_token_id, wp.sep_token_id
    assert blocks.shape[1] == SEQ_LEN and len(blocks) > 100
    assert (blocks[:, 0] == cls).all() and (blocks[:, -1] == sep).all()
    assert (blocks[:, 1] != sep).all()  # no block opens with an empty document
    assert blocks.min() >= 0 and blocks.max() < len(wp)
    assert not (blocks == wp.pad_token_id).any()  # the file's Fixed-128 padding is not applied
    assert (blocks[:, 1:-1] == cls).sum() == 0
    # the bodies are the documents in order, each followed by [SEP]; only a [SEP] that would open
    # a block is left out (the previous block's closing [SEP] marks that boundary)
    flat = [t for doc in doc_ids(wp) for t in [*doc, sep]]
    i, body = 0, SEQ_LEN - 2
    for block in blocks.tolist():
        while flat[i] == sep:
            i += 1
        assert block[1:-1] == flat[i:i + body]
        i += body
    assert len(flat) - i < body + 2  # only the tail shorter than a block is dropped


def test_the_eos_path_is_unchanged(tmp_path):
    bpe = train_tokenizer([str(FIXTURES / "general.jsonl")], "text", 1000, tmp_path / "bpe")
    blocks = pack(load_texts(FIXTURES / "general.jsonl", "text"), bpe, SEQ_LEN)["input_ids"]
    flat = [t for doc in doc_ids(bpe) for t in [*doc, bpe.eos_token_id]]  # the rule of version 1
    assert blocks == [flat[i:i + SEQ_LEN]
                      for i in range(0, len(flat) // SEQ_LEN * SEQ_LEN, SEQ_LEN)]


def test_blocks_packed_by_the_old_rule_are_not_reused(tmp_path, wp):
    path, thash = FIXTURES / "general.jsonl", tokenizer_hash(wp)
    old_key = hashlib.sha256(f"{corpus.content_hash(path)}|{thash}|{SEQ_LEN}|text|v1".encode())
    datasets.Dataset.from_dict({"input_ids": [[7] * SEQ_LEN] * 4}).save_to_disk(
        str(tmp_path / f"{path.name}-{old_key.hexdigest()[:24]}"))
    blocks = packed_blocks(str(path), wp, thash, SEQ_LEN, "text", tmp_path)
    assert corpus.PACKING_RULE_VERSION > 1 and (blocks[:, 0] == wp.cls_token_id).all()


@pytest.fixture(scope="module")
def bare_tok(wp_dir, tmp_path_factory):
    """The same vocabulary declared with neither an EOS nor [CLS]/[SEP]."""
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("bare") / "bare_tok"
    PreTrainedTokenizerFast(tokenizer_file=str(wp_dir / "tokenizer.json"), unk_token="[UNK]",
                            pad_token="[PAD]").save_pretrained(str(out))
    return load_tokenizer(out)


def test_a_tokenizer_without_eos_or_cls_sep_is_refused_by_name(bare_tok):
    with pytest.raises(ConfigError, match=r"bare_tok.*no eos_token and no cls_token or sep_token"):
        pack(load_texts(FIXTURES / "general.jsonl", "text"), bare_tok, SEQ_LEN)


def test_it_is_refused_before_any_source_is_read(tmp_path, bare_tok):
    data = DataConfig(train=[Source(str(tmp_path / "missing.jsonl"))], seq_len=SEQ_LEN)
    with pytest.raises(ConfigError, match=r"^cfg.yaml: tokenizer .*bare_tok"):
        build_lm_data(data, bare_tok, tokenizer_hash(bare_tok), tmp_path, 8, "cfg.yaml")


def variant(wp_dir, tmp_path, edit_json=None, edit_config=None):
    """A copy of the tokenizer dir with tokenizer.json / tokenizer_config.json edited, loaded."""
    out = tmp_path / f"variant{len(list(tmp_path.iterdir()))}"
    shutil.copytree(wp_dir, out)
    for name, edit in (("tokenizer.json", edit_json), ("tokenizer_config.json", edit_config)):
        if edit:
            data = json.loads((out / name).read_text())
            edit(data)
            (out / name).write_text(json.dumps(data))
    return load_tokenizer(out)


def no_call_settings(tok):
    tok["truncation"] = tok["padding"] = None


def renamed_entry(tok):
    vocab = tok["model"]["vocab"]
    word = next(w for w in vocab if w.isalpha() and len(w) > 3)
    vocab[word + "x"] = vocab.pop(word)


def not_lowercased(tok):
    tok["normalizer"]["lowercase"] = False


def swapped_sep_mask(tok):
    swap = {"[SEP]": "[MASK]", "[MASK]": "[SEP]"}
    vocab = tok["model"]["vocab"]
    vocab["[SEP]"], vocab["[MASK]"] = vocab["[MASK]"], vocab["[SEP]"]
    ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
    for added in tok["added_tokens"]:
        added["id"] = ids[swap.get(added["content"], added["content"])]
    tok["post_processor"]["special_tokens"]["[SEP]"]["ids"] = [vocab["[SEP]"]]


def test_the_hash_covers_what_decides_ids_only(wp_dir, wp, tmp_path):
    want = tokenizer_hash(wp)
    same = variant(wp_dir, tmp_path, no_call_settings,
                   lambda cfg: cfg.update(max_length=None, model_max_length=256))
    assert tokenizer_hash(same) == want
    wp("a first call drops the file's padding and truncation from the backend")
    assert tokenizer_hash(wp) == want
    exported = tmp_path / "exported"
    wp.save_pretrained(str(exported))
    assert json.loads((exported / "tokenizer.json").read_text())["padding"] is None
    assert tokenizer_hash(load_tokenizer(exported)) == want
    for tok_edit, cfg_edit in ((renamed_entry, None),
                               (not_lowercased, lambda cfg: cfg.update(do_lower_case=False)),
                               (swapped_sep_mask, None),
                               (None, lambda cfg: cfg.update(eos_token="[SEP]"))):
        other = variant(wp_dir, tmp_path, tok_edit, cfg_edit)
        assert tokenizer_hash(other) != want, (tok_edit, cfg_edit)
        if tok_edit in (not_lowercased, swapped_sep_mask):  # real differences in the ids
            assert other("Hello World")["input_ids"] != wp("Hello World")["input_ids"]
