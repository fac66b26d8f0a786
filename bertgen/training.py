"""Fine-tuning loop: warm start or random init, AdamW, dev evaluation, exact resume.

A run is a list of *stages* (for example: copy the training sentences for 3 epochs, then the
task for 10), each a list of tokenized (source, target) examples. The data order is a pure
function of (seed, stage, epoch): examples are shuffled, bucketed by length (little padding),
cut into batches, and the batches shuffled. Everything a run needs to continue lives in one
file, `resume.pt` (model, optimizer, scheduler, torch RNG, data position, best score, log),
written to a temporary file and moved into place with os.replace, so a run killed at any
moment (kill -9 included) resumes from its last save and ends with exactly the weights an
uninterrupted run ends with (on CPU, with the same thread count).

Entry points: `train(args)` for `python -m bertgen train ...` (see `add_train_arguments`),
and `Trainer` / `TrainConfig` for code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoints
from .config import BertGenerationConfig, EncoderDecoderConfig
from .data import SEP, DataError, load_pairs, sentences
from .generation import generate, resolve_settings
from .modeling import EncoderDecoderModel

INITS = ("rnd2rnd", "bert2rnd", "bert2bert", "bertShare", "checkpoint")
METRICS = ("sari", "bleu", "exact_match", "loss")


class TrainingError(RuntimeError):
    """A training run that cannot start: bad data, unknown base checkpoint, vocab mismatch."""


@dataclass
class TrainConfig:
    output_dir: str
    train_file: str
    dev_file: str | None = None
    direction: str = "split"           # split | fusion | both (direction read from `<::::>`)
    source_column: str = "source"
    target_column: str = "target"
    init: str = "rnd2rnd"              # see INITS
    base: str | None = None            # BERT folder (warm starts) or checkpoint (init=checkpoint)
    num_layers: int | None = None      # warm starts: keep the first layers
    trim_vocabulary: int = 0           # warm starts: keep only tokens the training sentences use this often
    # rnd2rnd architecture and vocabulary
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 1024
    share: bool = True                 # tie encoder and decoder (bertShare-style) for rnd2rnd
    vocab_size: int = 8000
    dropout: float = 0.1
    # schedule
    copy_epochs: int = 0               # stage 1: reproduce the training sentences
    epochs: float = 3                  # stage 2: the task
    max_steps: int | None = None       # shortens the schedule (the LR decays to 0 there)
    stop_at_step: int | None = None    # ends the run early without changing the schedule
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    warmup_steps: int = 500
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    max_source_length: int = 96
    max_target_length: int = 96
    # evaluation and saving
    eval_every: int = 1000
    eval_rows: int = 300
    metric: str = "sari"
    eval_max_new_tokens: int = 112
    save_every: int | None = None      # resume snapshot; defaults to eval_every
    save_dtype: str | None = None      # dtype of the best checkpoint (e.g. float16)
    generation_config: dict = field(default_factory=dict)
    seed: int = 0
    threads: int | None = None
    progress: bool = True


# ----------------------------------------------------------------------------------------
# Data order
# ----------------------------------------------------------------------------------------
def epoch_batches(lengths: list[int], batch_size: int, seed: int, stage: int, epoch: int,
                  bucket: int = 50) -> list[list[int]]:
    """Example indices per batch for one epoch: shuffled, length-bucketed, batches shuffled."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    batches = []
    chunk = batch_size * bucket
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples)
    ids = torch.full((len(examples), src_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), src_len), dtype=torch.long)
    labels = torch.full((len(examples), tgt_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(examples):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
        labels[i, :len(t)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------------------
# Decoding for dev evaluation (through bertgen.generation, greedy or beam)
# ----------------------------------------------------------------------------------------
def predict(model, tokenizer, sources: list[str], batch_size: int = 64, max_new_tokens: int = 112,
            max_source_length: int = 96, num_beams: int = 1, **settings) -> list[str]:
    """Decoded predictions for `sources` (greedy, or beams with num_beams > 1)."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    preds: list[str] = [""] * len(sources)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [_encode(tokenizer, sources[i])[:max_source_length] for i in idx]
        pad = model.config.pad_token_id
        enc = collate([(s or [pad], [0]) for s in batch], pad)
        gs = resolve_settings(model, num_beams=num_beams, max_new_tokens=max_new_tokens, **settings)
        seqs = generate(model, enc["input_ids"], enc["attention_mask"], gs).sequences.tolist()
        for i, seq in zip(idx, seqs):
            preds[i] = tokenizer.decode_generated(seq)
    return preds


def score(predictions: list[str], sources: list[str], references: list[str],
          names=("bleu", "sari", "exact_match")) -> dict[str, float]:
    """BLEU (sacrebleu corpus), SARI (common variant) and exact match, 0-100."""
    from evaluation.metrics import compute  # evaluation sits above bertgen; imported lazily
    refs = [[r] for r in references]
    out = {}
    for name in names:
        kwargs = {"sources": sources, "variant": "common"} if name == "sari" else {}
        out[name] = round(float(compute(name, predictions, refs, **kwargs)[name]), 3)
    return out


# ----------------------------------------------------------------------------------------
# Tokenizer and model set-up
# ----------------------------------------------------------------------------------------
def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def build_tokenizer(cfg: TrainConfig, texts: list[str], workdir: Path, base: Path | None = None):
    from .tokenization import load_tokenizer, train_sentencepiece
    if cfg.init == "rnd2rnd":
        folder = workdir / "tokenizer"
        if (folder / "spiece.model").is_file():  # resuming: the vocabulary made at the start
            return load_tokenizer(folder)
        return train_sentencepiece(texts, cfg.vocab_size, folder, seed=cfg.seed)
    base = base or _base_folder(cfg)
    try:
        return load_tokenizer(base)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise TrainingError(f"base checkpoint {base} has no usable tokenizer: {err}") from None


def _base_folder(cfg: TrainConfig) -> Path:
    if not cfg.base:
        raise TrainingError(f"--init {cfg.init} needs --base (a BERT or checkpoint folder)")
    try:
        return checkpoints.resolve(cfg.base)
    except checkpoints.CheckpointError as err:
        raise TrainingError(f"unknown base checkpoint: {err}") from None


def build_model(cfg: TrainConfig, tokenizer, base: Path | None = None) -> EncoderDecoderModel:
    torch.manual_seed(cfg.seed)
    if cfg.init == "rnd2rnd":
        enc = BertGenerationConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=max(cfg.max_source_length, cfg.max_target_length + 1, 128),
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id)
        config = EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder(), tie_encoder_decoder=cfg.share,
                                      decoder_start_token_id=tokenizer.bos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return EncoderDecoderModel(config)
    base = base or _base_folder(cfg)
    try:
        if cfg.init == "checkpoint":
            model = checkpoints.load(base)
            if not isinstance(model, EncoderDecoderModel):
                raise TrainingError(f"{base} is not an encoder-decoder checkpoint; use a warm-start --init")
        else:
            model = checkpoints.warm_start(base, recipe=cfg.init, num_hidden_layers=cfg.num_layers,
                                           seed=cfg.seed, dropout=cfg.dropout)
    except checkpoints.CheckpointError as err:
        raise TrainingError(f"cannot use base checkpoint {cfg.base}: {err}") from None
    # The run makes a new model: its dev decoding must not inherit the base folder's decoding
    # defaults (a fusion model fine-tuned from a split model must not be forced to split).
    model.source_dir = None
    return model


def check_vocabulary(model: EncoderDecoderModel, tokenizer, examples) -> None:
    vocab = model.config.decoder.vocab_size
    if len(tokenizer) > vocab:
        raise TrainingError(f"vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens but the "
                            f"model's embeddings only {vocab}")
    top = max((max(s + t) for s, t in examples if s + t), default=0)
    if top >= vocab:
        raise TrainingError(f"vocabulary mismatch: the data has token id {top}, the model only {vocab} rows")
    for name in ("pad_token_id", "eos_token_id"):
        tok, mod = getattr(tokenizer, name), getattr(model.config, name)
        if tok is not None and mod is not None and tok != mod:
            raise TrainingError(f"vocabulary mismatch: tokenizer {name}={tok}, model {name}={mod}")


# ----------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.metric not in METRICS:
            raise TrainingError(f"unknown metric {cfg.metric!r}; choose one of {', '.join(METRICS)}")
        if cfg.init not in INITS:
            raise TrainingError(f"unknown --init {cfg.init!r}; choose one of {', '.join(INITS)}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        pairs = self._pairs(cfg.train_file)
        self.dev = self._pairs(cfg.dev_file)[:cfg.eval_rows] if cfg.dev_file else []
        texts = [t for p in pairs for t in p]
        if cfg.init == "rnd2rnd" and not (self.out / "tokenizer" / "spiece.model").is_file():
            texts = [t.replace(SEP, " ") for t in texts] + [SEP]
        base = self._trimmed_base(pairs) if cfg.trim_vocabulary and cfg.init in checkpoints.RECIPES else None
        self.tokenizer = build_tokenizer(cfg, texts, self.out, base)
        self.model = build_model(cfg, self.tokenizer, base)
        # the model's ids rule: a BERT vocabulary ends with [SEP] and pads with [PAD]
        eos = self.eos = self.model.config.eos_token_id
        self.pad = self.model.config.pad_token_id

        def tok(src, tgt):
            return (_encode(self.tokenizer, src)[:cfg.max_source_length],
                    _encode(self.tokenizer, tgt)[:cfg.max_target_length - 1] + [eos])

        self.stages: list[tuple[list, int]] = []  # (examples, epochs)
        if cfg.copy_epochs:
            copies = sorted(set(sentences(pairs))) if SEP in pairs[0][0] + pairs[0][1] else \
                sorted({t for p in pairs for t in p})
            self.stages.append(([tok(s, s) for s in copies], cfg.copy_epochs))
        task = [tok(s, t) for s, t in pairs]
        full, frac = int(cfg.epochs), cfg.epochs - int(cfg.epochs)
        self.stages.append((task, full + (1 if frac > 0 else 0)))
        self._frac = frac
        check_vocabulary(self.model, self.tokenizer, [e for st, _ in self.stages for e in st])
        self.plan = self._plan()
        total = len(self.plan)
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        self.total_steps = total
        self.optimizer, self.scheduler = self._optimizer()
        self.step = 0
        self.best = None
        self.history: list[dict] = []

    def _trimmed_base(self, pairs) -> Path:
        """The base BERT with the vocabulary of the training sentences (made once per run)."""
        folder = self.out / "trimmed-base"
        if not (folder / "model.safetensors").is_file():  # written last: a complete folder
            unique = sorted(set(sentences(pairs)))
            separator = (SEP,) if any(SEP in s + t for s, t in pairs) else ()  # one token, not six
            try:
                checkpoints.trim_vocabulary(_base_folder(self.cfg), unique, folder, self.cfg.trim_vocabulary,
                                            new_tokens=separator)
            except checkpoints.CheckpointError as err:
                raise TrainingError(f"cannot trim the vocabulary of {self.cfg.base}: {err}") from None
        return folder

    # -- data --------------------------------------------------------------------------
    def _pairs(self, spec):
        cfg = self.cfg
        try:
            if cfg.direction == "both":
                split = load_pairs(spec, "split", cfg.source_column, cfg.target_column)
                fusion = [(t, s) for s, t in split]
                return [p for pair in zip(split, fusion) for p in pair]
            return load_pairs(spec, cfg.direction, cfg.source_column, cfg.target_column)
        except DataError as err:
            raise TrainingError(str(err)) from None

    def _plan(self) -> list[tuple[int, int, int]]:
        """(stage, epoch, batch) of every optimizer step's first micro-batch, in order."""
        cfg = self.cfg
        plan = []
        for s, (examples, epochs) in enumerate(self.stages):
            lengths = [len(a) + len(b) for a, b in examples]
            for e in range(epochs):
                n = len(epoch_batches(lengths, cfg.batch_size, cfg.seed, s, e))
                if s == len(self.stages) - 1 and e == epochs - 1 and self._frac > 0:
                    n = max(1, int(n * self._frac))
                steps = n // cfg.grad_accum
                plan.extend((s, e, k * cfg.grad_accum) for k in range(steps))
        return plan

    def _micro_batches(self, step: int):
        s, e, b = self.plan[step]
        examples, _ = self.stages[s]
        key = (s, e)
        if getattr(self, "_cached_key", None) != key:
            lengths = [len(a) + len(c) for a, c in examples]
            self._cached = epoch_batches(lengths, self.cfg.batch_size, self.cfg.seed, s, e)
            self._cached_key = key
        for k in range(b, b + self.cfg.grad_accum):
            yield collate([examples[i] for i in self._cached[k]], self.pad)

    # -- optimisation --------------------------------------------------------------------
    def _optimizer(self):
        cfg = self.cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        warm, total = cfg.warmup_steps, max(1, self.total_steps)

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    # -- state -------------------------------------------------------------------------
    @property
    def resume_path(self) -> Path:
        return self.out / "resume.pt"

    def save_state(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(),
                 "step": self.step, "best": json.dumps(self.best), "history": json.dumps(self.history),
                 "config": json.dumps(dataclasses.asdict(self.cfg), sort_keys=True)}
        tmp = self.resume_path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.resume_path)

    def load_state(self) -> bool:
        if not self.resume_path.is_file():
            return False
        state = torch.load(self.resume_path, map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        changed = [k for k in ("train_file", "direction", "init", "seed", "batch_size", "grad_accum",
                               "copy_epochs", "epochs", "lr", "max_steps")
                   if saved.get(k, getattr(TrainConfig, k, None)) != getattr(self.cfg, k)]
        if changed:
            raise TrainingError(f"{self.resume_path} was written with other settings ({', '.join(changed)}); "
                                f"use a new --output-dir or the same settings")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best = json.loads(state["best"])
        self.history = json.loads(state["history"])
        return True

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self) -> dict:
        cfg = self.cfg
        sources = [s for s, _ in self.dev]
        refs = [t for _, t in self.dev]
        model = self.model
        was_training = model.training
        model.eval()
        result = {"step": self.step}
        with torch.no_grad():
            losses = []
            for start in range(0, len(self.dev), 64):
                ex = [(_encode(self.tokenizer, s)[:cfg.max_source_length],
                       _encode(self.tokenizer, t)[:cfg.max_target_length - 1] + [self.eos])
                      for s, t in self.dev[start:start + 64]]
                b = collate(ex, self.pad)
                losses.append(float(model(**b).loss) * len(ex))
            result["dev_loss"] = round(sum(losses) / len(self.dev), 4)
        if cfg.metric != "loss":
            t0 = time.time()
            preds = predict(model, self.tokenizer, sources, max_new_tokens=cfg.eval_max_new_tokens,
                            max_source_length=cfg.max_source_length)
            result.update(score(preds, sources, refs))
            result["eval_s"] = round(time.time() - t0, 1)
            result["example"] = preds[0]
        model.train(was_training)
        return result

    def _better(self, result: dict) -> bool:
        key = "dev_loss" if self.cfg.metric == "loss" else self.cfg.metric
        if self.best is None:
            return True
        if key == "dev_loss":
            return result[key] < self.best[key]
        return result[key] > self.best[key]

    def save_best(self, result: dict) -> None:
        self.best = {k: v for k, v in result.items() if k != "example"}
        folder = self.out / "best"
        checkpoints.save(self.model, folder, tokenizer=self.tokenizer,
                         generation_config=self.cfg.generation_config or None, dtype=self.cfg.save_dtype)
        (folder / "training_state.json").write_text(json.dumps(self.best, indent=2) + "\n")

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        resumed = self.load_state()
        save_every = cfg.save_every or cfg.eval_every
        model = self.model
        model.train()
        log = open(self.out / "log.jsonl", "a")
        if resumed:
            log.write(json.dumps({"resumed_at": self.step}) + "\n")
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       file=sys.stderr, mininterval=2.0)
        t0, seen, ema = time.time(), 0, None
        end = min(self.total_steps, cfg.stop_at_step or self.total_steps)
        while self.step < end:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, n_ex = 0.0, 0
            for batch in self._micro_batches(self.step):
                out = model(**batch, label_smoothing=cfg.label_smoothing)
                (out.loss / cfg.grad_accum).backward()
                loss_sum += float(out.loss.detach()) / cfg.grad_accum
                n_ex += batch["input_ids"].shape[0]
            if cfg.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            seen += n_ex
            ema = loss_sum if ema is None else 0.98 * ema + 0.02 * loss_sum
            rate = seen / max(1e-9, time.time() - t0)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.3f}", ex_s=f"{rate:.1f}", refresh=False)
            if self.step % 50 == 0 or self.step == end:
                log.write(json.dumps({"step": self.step, "loss": round(ema, 4), "ex_s": round(rate, 1),
                                      "lr": self.scheduler.get_last_lr()[0],
                                      "stage": self.plan[self.step - 1][0]}) + "\n")
                log.flush()
            last = self.step == end
            if self.dev and (self.step % cfg.eval_every == 0 or last):
                result = self.evaluate()
                result["train_loss"] = round(ema, 4)
                result["elapsed_s"] = round(time.time() - t0, 1)
                self.history.append(result)
                log.write(json.dumps(result) + "\n")
                log.flush()
                if bar is not None:
                    bar.write(json.dumps(result))
                if self._better(result):
                    self.save_best(result)
            if self.step % save_every == 0 or last:
                self.save_state()
        if bar is not None:
            bar.close()
        log.close()
        if not self.dev:  # no dev set: the last weights are the result
            self.save_best({"step": self.step})
        return self.out / "best"


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TrainConfig(output_dir="", train_file="")
    a = parser.add_argument
    a("--train-file", required=True, help="training pairs: WikiSplit TSV, .jsonl, .csv or .tsv (header)")
    a("--dev-file", help="dev pairs (same formats) for evaluation and best-checkpoint selection")
    a("--output-dir", required=True, help="run folder: resume.pt, log.jsonl, best/ (the checkpoint)")
    a("--direction", default=d.direction, choices=("split", "fusion", "both"),
      help="WikiSplit files: split (col1->col2), fusion (col2->col1) or both in one model")
    a("--source-column", default=d.source_column)
    a("--target-column", default=d.target_column)
    a("--init", default=d.init, choices=INITS, help="rnd2rnd (new vocabulary), bert2rnd/bert2bert/"
      "bertShare (warm start from --base BERT), checkpoint (fine-tune an encoder-decoder --base)")
    a("--base", help="BERT folder for warm starts, or an encoder-decoder checkpoint folder/hub id")
    a("--num-layers", type=int, help="warm starts: keep only the first N layers of the BERT")
    a("--trim-vocabulary", type=int, metavar="MIN_COUNT", help="warm starts: keep only the WordPiece "
      "tokens the training sentences use at least MIN_COUNT times (and every single character)")
    a("--hidden-size", type=int, default=d.hidden_size)
    a("--layers", type=int, default=d.layers)
    a("--heads", type=int, default=d.heads)
    a("--intermediate-size", type=int, default=d.intermediate_size)
    a("--no-share", dest="share", action="store_false", help="rnd2rnd: separate encoder/decoder weights")
    a("--vocab-size", type=int, default=d.vocab_size, help="rnd2rnd: sentencepiece vocabulary size")
    a("--dropout", type=float, default=d.dropout)
    a("--copy-epochs", type=int, default=d.copy_epochs,
      help="first train to reproduce every training sentence for N epochs (copy pre-training)")
    a("--epochs", type=float, default=d.epochs)
    a("--max-steps", type=int, help="shorter schedule: the LR decays to 0 at this step")
    a("--stop-at-step", type=int, help="end the run at this step without changing the LR schedule "
      "(a resumed run may go further)")
    a("--batch-size", type=int, default=d.batch_size)
    a("--grad-accum", type=int, default=d.grad_accum)
    a("--lr", type=float, default=d.lr)
    a("--warmup-steps", type=int, default=d.warmup_steps)
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--clip-norm", type=float, default=d.clip_norm)
    a("--label-smoothing", type=float, default=d.label_smoothing)
    a("--max-source-length", type=int, default=d.max_source_length)
    a("--max-target-length", type=int, default=d.max_target_length)
    a("--eval-every", type=int, default=d.eval_every)
    a("--eval-rows", type=int, default=d.eval_rows)
    a("--metric", default=d.metric, choices=METRICS, help="selects the best checkpoint")
    a("--save-every", type=int, help="resume snapshot every N steps (default: --eval-every)")
    a("--save-dtype", choices=("float32", "float16", "bfloat16"))
    a("--num-beams", type=int, help="generation_config.json default for the saved checkpoint")
    a("--seed", type=int, default=d.seed)
    a("--threads", type=int, help="torch CPU threads")
    a("--no-progress", dest="progress", action="store_false")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and v is not None}
    cfg = TrainConfig(**kwargs)
    if getattr(args, "num_beams", None):
        cfg.generation_config = {"num_beams": args.num_beams, "max_new_tokens": cfg.max_target_length + 16}
    return cfg


def train(args: argparse.Namespace | TrainConfig) -> Path:
    """`python -m bertgen train ...`: runs (or resumes) a training run; returns the best checkpoint."""
    cfg = args if isinstance(args, TrainConfig) else config_from_args(args)
    return Trainer(cfg).run()


def main(argv=None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="python -m bertgen.training"))
    try:
        path = train(parser.parse_args(argv))
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
