"""Dynamic padding per micro-batch with length-grouped batches: the global batch of a step is the
same at any world size, a micro-batch padded to its own longest row gives the loss of the
padded-to-max one, grouping reaches >= 0.9 real tokens on the WordNet glosses, the cursor resumes
exactly, and evaluation in length order gives today's metrics."""
import pytest
import torch
from conftest import FIXTURES, tiny_base

from rtune_ds.config.schema import TaskConfig
from rtune_ds.data.examples import Examples, ExampleSource, load_task, real_token_fraction
from rtune_ds.data.tokenizer import load_tokenizer

GLOBAL, STEPS = 32, 20  # 640 rows: more than two epochs of the 240 training examples


def task_data(cache_dir, kind: str = "classification"):
    base = tiny_base(cache_dir)
    if kind == "classification":
        task = TaskConfig(train=str(FIXTURES / "cls_train.jsonl"),
                          dev=str(FIXTURES / "cls_dev.jsonl"), max_len=32)
    else:
        task = TaskConfig(type="lm", train=str(FIXTURES / "sft_train.jsonl"),
                          dev=str(FIXTURES / "sft_dev.jsonl"), max_len=32)
    tok = load_tokenizer(base)
    return base, tok, load_task(task, tok, 3, "test")


def micro_batches(source: ExampleSource, world: int, micro: int) -> list[list[list[int]]]:
    """Per step, the rows of every micro-batch the ranks take, in the order (micro, rank): each
    rank keeps its own source and slices the global batch as the engine does."""
    accum = GLOBAL // (micro * world)
    sources = [source] + [ExampleSource(source.examples, source.seed) for _ in range(world - 1)]
    steps = []
    for step in range(STEPS):
        rows = [s.global_batch(step, GLOBAL) for s in sources]
        assert all(torch.equal(r, rows[0]) for r in rows)  # every rank sees the same global batch
        steps.append([rows[rank][(m * world + rank) * micro:(m * world + rank + 1) * micro].tolist()
                      for m in range(accum) for rank in range(world)])
    return steps


def test_global_batch_and_micro_batches_do_not_depend_on_world_size(cache_dir):
    _, _, data = task_data(cache_dir)
    train = data.splits["train"]
    one = micro_batches(ExampleSource(train, 7), 1, 8)
    two = micro_batches(ExampleSource(train, 7), 2, 8)
    assert one == two
    seen = torch.tensor([r for step in one[:15] for m in step for r in m])  # 480 rows: 2 epochs
    assert torch.equal(torch.bincount(seen, minlength=len(train)), torch.full((len(train),), 2))


def encoder(vocab: int, labels: int):
    """A tiny BERT classifier (absolute positions, [CLS] pooler) like all-MiniLM-L6-v2's."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=labels,
        pad_token_id=0)).eval()


def models(base, tok, data):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if data.type == "lm":
        return {"llama": AutoModelForCausalLM.from_pretrained(str(base)).eval()}
    n = len(data.label_names)
    return {"llama": AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=n, pad_token_id=tok.pad_token_id).eval(),
            "bert": encoder(len(tok), n)}


def loss_of(model, kind: str, batch: dict) -> float:
    from rtune_ds.train.objectives import classification_loss, lm_loss

    with torch.no_grad():
        return (classification_loss if kind == "classification" else lm_loss)(model, batch).item()


@pytest.mark.parametrize("kind", ["classification", "lm"])
def test_micro_batch_loss_equals_padding_to_max(cache_dir, kind):
    base, tok, data = task_data(cache_dir, kind)
    train = data.splits["train"]
    steps = {world: micro_batches(ExampleSource(train, 7), world, 4) for world in (1, 2)}
    for name, model in models(base, tok, data).items():
        step_loss = {}
        for world, per_step in steps.items():
            losses = []
            for m in per_step[0] + per_step[7]:  # 7: a step across the first epoch's end
                tight, wide = train.batch(m), train.batch(m, pad_to_max=True)
                assert tight["input_ids"].shape[1] == int(train.lengths[m].max())
                losses.append(loss_of(model, kind, tight))
                assert losses[-1] == pytest.approx(loss_of(model, kind, wide), abs=1e-6), name
            step_loss[world] = sum(losses) / len(losses)
        assert step_loss[1] == pytest.approx(step_loss[2], abs=1e-6)


def test_grouping_reaches_ninety_percent_real_tokens_on_wordnet_glosses(cache_dir):
    """The demo's batch (micro 16, global 32, max_len 64) on the real glosses of the fixture."""
    tok = load_tokenizer(tiny_base(cache_dir))
    task = TaskConfig(train=str(FIXTURES / "general.jsonl"), dev=str(FIXTURES / "general.jsonl"),
                      label_field="lexname", max_len=64)
    train = load_task(task, tok, 3, "test").splits["train"]
    epoch = -(-len(train) // GLOBAL)
    before = real_token_fraction(ExampleSource(train, 1, grouped=False, pad_to_max=True), GLOBAL,
                                 16, epoch)
    after = real_token_fraction(ExampleSource(train, 1), GLOBAL, 16, epoch)
    assert after >= 0.9 and after - before > 0.3, (before, after)


def test_resume_continues_the_same_order(cache_dir):
    _, _, data = task_data(cache_dir)
    train = data.splits["train"]
    whole = ExampleSource(train, 5)
    want = [whole.global_batch(s, GLOBAL) for s in range(STEPS)]
    for stop in (3, 7, 8):  # 7 and 8: around the first epoch's end
        first = ExampleSource(train, 5)
        for s in range(stop):
            first.global_batch(s, GLOBAL)
        again = ExampleSource(train, 5)
        again.load_state_dict(first.state_dict())
        assert all(torch.equal(again.global_batch(s, GLOBAL), want[s]) for s in range(stop, STEPS))
    # a cursor saved before length grouping resumes in the plain permutation it began with
    plain = ExampleSource(train, 5, grouped=False)
    old = ExampleSource(train, 5)
    old.load_state_dict({"cursor": 0})
    assert all(torch.equal(old.global_batch(s, GLOBAL), plain.global_batch(s, GLOBAL))
               for s in range(STEPS))


class PaddedToMax(Examples):
    """The evaluation batches of before: file order, every row padded to the split's width."""

    def batch(self, idx, pad_to_max: bool = True):
        return super().batch(idx, pad_to_max=True)

    def by_length(self):
        return torch.arange(len(self))


def padded_to_max(examples: Examples) -> PaddedToMax:
    return PaddedToMax(examples.input_ids, examples.attention_mask, examples.labels,
                       examples.prompt_len)


@pytest.mark.parametrize("kind", ["classification", "lm"])
def test_evaluation_in_length_order_matches_padding_to_max(cache_dir, kind):
    from rtune_ds.train.evaluate import evaluate_classification, evaluate_sft

    base, tok, data = task_data(cache_dir, kind)
    dev = data.splits["dev"]
    assert not torch.equal(dev.by_length(), torch.arange(len(dev)))
    for model in models(base, tok, data).values():
        if kind == "classification":
            got, want = (evaluate_classification(model, ex, 8, len(data.label_names))
                         for ex in (dev, padded_to_max(dev)))
        else:
            got, want = (evaluate_sft(model, ex, 8, 4, tok.pad_token_id)
                         for ex in (dev, padded_to_max(dev)))
        assert got.keys() == want.keys()
        for key in got:
            exact = key != "eval/loss"
            assert got[key] == (want[key] if exact else pytest.approx(want[key], abs=1e-6)), key
