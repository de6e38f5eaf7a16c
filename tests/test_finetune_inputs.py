"""rtune finetune refuses bad inputs before training: exit 2, one line naming the culprit, no run
output. Plus the pure parts: few-shot sampling, metrics, tokenised examples, the batch source."""
import json

import pytest
import torch
from conftest import FIXTURES, finetune_config, rtune, tiny_base, write_config


def setup_case(tmp_path, cache_dir, case):
    base = tiny_base(cache_dir)
    cfg = finetune_config(tmp_path / "run", base, "lora")
    if case == "label outside the label set":
        dev = tmp_path / "dev.jsonl"
        dev.write_text(FIXTURES.joinpath("cls_dev.jsonl").read_text()
                       + json.dumps({"text": "a car on the road", "label": "vehicle"}) + "\n")
        cfg["task"]["dev"] = str(dev)
        culprits = ["'vehicle'", "dev.jsonl"]
    elif case == "label outside task.labels":
        cfg["task"]["labels"] = ["animal", "food", "tool"]
        culprits = ["'place'", "task.labels", "cls_train.jsonl"]
    elif case == "null label":
        train = tmp_path / "train.jsonl"
        lines = FIXTURES.joinpath("cls_train.jsonl").read_text().splitlines()
        lines.insert(2, json.dumps({"text": "a boat on the sea", "label": None}))
        train.write_text("\n".join(lines) + "\n")
        cfg["task"]["train"] = str(train)
        culprits = ["train.jsonl: line 3", "'label' is null or missing", "task.label_field"]
    elif case == "text missing in a record":
        dev = tmp_path / "dev.jsonl"
        dev.write_text(FIXTURES.joinpath("cls_dev.jsonl").read_text() + "\n"
                       + json.dumps({"label": "tool"}) + "\n")
        n_lines = len(dev.read_text().splitlines())
        cfg["task"]["dev"] = str(dev)
        culprits = [f"dev.jsonl: line {n_lines}", "'text' is null or missing"]
    elif case == "text column missing":
        cfg["task"]["text_field"] = "sentence"
        culprits = ["'sentence'", "task.text_field", "cls_train.jsonl"]
    elif case == "lora target module not in the model":
        cfg["tuning"]["lora"] = {"target_modules": ["q_proj", "query_proj"]}
        culprits = ["tuning.lora.target_modules", "'query_proj'"]
    elif case == "base of another architecture":
        cfg["model"]["architecture"] = "roberta"
        culprits = ["model.architecture", "'llama'"]
    elif case == "lm task on an encoder base":
        cfg["model"]["path"] = str(tiny_base(cache_dir, "roberta-1m"))
        cfg["task"].update(type="lm", train=str(FIXTURES / "sft_train.jsonl"),
                           dev=str(FIXTURES / "sft_dev.jsonl"), test=None)
        culprits = ["model.path", "'roberta'", "causal-LM"]
    elif case == "few-shot of zero":
        cfg["task"]["few_shot"] = 0
        culprits = ["task.few_shot"]
    elif case == "examples longer than the positions":
        cfg["task"]["max_len"] = 1000
        culprits = ["task.max_len", "1000 tokens per example", "at most 256"]
    return write_config(tmp_path / "run.yaml", cfg), culprits


CASES = ["label outside the label set", "label outside task.labels", "null label",
         "text missing in a record", "text column missing",
         "lora target module not in the model", "base of another architecture",
         "lm task on an encoder base", "few-shot of zero", "examples longer than the positions"]


@pytest.mark.parametrize("case", CASES)
def test_bad_finetune_input_fails_before_training(tmp_path, cache_dir, case):
    config, culprits = setup_case(tmp_path, cache_dir, case)
    proc = rtune(["finetune", "--config", str(config)], cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("rtune: error:") and all(c in err for c in culprits), err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_export_refuses_another_base(tmp_path, cache_dir):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({
        "format": "rtune-bundle/1", "kind": "delta", "base": {"fingerprint": "0" * 32, "path": "x"},
        "task": {"type": "classification", "labels": ["a", "b"], "pad_token_id": 0}}))
    proc = rtune(["export", "--bundle", str(bundle), "--base", str(tiny_base(cache_dir)),
                  "--out", str(tmp_path / "out")], cache_dir)
    assert proc.returncode == 2 and "fingerprint" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_few_shot_takes_k_per_class_seeded():
    from rtune_ds.data.examples import few_shot_indices

    labels = [i % 3 for i in range(30)] + [3]  # class 3 has one example only
    picked = few_shot_indices(labels, 4, seed=7)
    counts = torch.bincount(torch.tensor([labels[i] for i in picked])).tolist()
    assert counts == [4, 4, 4, 1] and picked == sorted(picked)
    assert picked == few_shot_indices(labels, 4, seed=7)
    assert picked != few_shot_indices(labels, 4, seed=8)


def test_classification_metrics():
    from rtune_ds.train.evaluate import classification_metrics

    # gold x predicted: class 0: 3 right 1 wrong (as 1); class 1: 2 right; class 2 never seen
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    m = classification_metrics(confusion)
    assert m["eval/accuracy"] == pytest.approx(5 / 6)
    f1_0, f1_1 = 2 * 3 / (4 + 3), 2 * 2 / (2 + 3)
    assert m["eval/f1"] == pytest.approx((f1_0 + f1_1) / 2)


def test_sft_examples_mask_the_prompt(cache_dir):
    from rtune_ds.data.examples import encode_sft
    from rtune_ds.data.tokenizer import load_tokenizer
    from rtune_ds.train.objectives import IGNORE

    tok = load_tokenizer(tiny_base(cache_dir))
    ex = encode_sft(["which class is cat?", "a much longer prompt about a dog"], [" animal", " x"],
                    tok, 64)
    for row, labels, plen in zip(ex.input_ids, ex.labels, ex.prompt_len):
        assert (labels[:plen] == IGNORE).all() and labels[plen] != IGNORE
        target = labels[labels != IGNORE]
        assert target[-1] == tok.eos_token_id and torch.equal(row[plen:plen + len(target)], target)
    assert tok.decode(ex.labels[0][ex.labels[0] != IGNORE][:-1]) == " animal"


def test_batch_source_is_seeded_and_resumable():
    from rtune_ds.data.examples import Examples, ExampleSource

    ex = Examples(torch.arange(10)[:, None], torch.ones(10, 1), torch.arange(10))
    a, b = ExampleSource(ex, 5), ExampleSource(ex, 5)
    first = [a.global_batch(s, 4) for s in range(3)]  # 12 rows: every example, then a new epoch
    assert sorted(torch.cat(first)[:10].tolist()) == list(range(10))
    b.global_batch(0, 4)
    c = ExampleSource(ex, 5)
    c.load_state_dict(b.state_dict())
    assert torch.equal(c.global_batch(1, 4), first[1]) and torch.equal(c.global_batch(2, 4), first[2])
    assert not torch.equal(ExampleSource(ex, 6).global_batch(0, 4), first[0])
