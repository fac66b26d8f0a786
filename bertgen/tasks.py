"""The task registry: what each task is, example inputs, decoding defaults, and its checkpoints.

One place that the CLI, the evaluation and the app read, so that "sentence fusion" means the
same checkpoints, the same input conventions and the same defaults everywhere. Bundled
checkpoints (in `checkpoints/`, trained by us) are each task's offline default; the public
google/* checkpoints download on demand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
SEP = "<::::>"


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint the workbench knows by name."""

    name: str  # a folder under checkpoints/ (bundled) or a hub id
    task: str
    description: str
    bundled: bool = False
    # Input conventions the checkpoint was trained with.
    add_special_tokens: bool = False  # bos + text + eos on the input (the google wikisplit model)
    pretokenize: bool = False  # WikiSplit-style spaces around punctuation ("word , word")
    replace_double_quotes: bool = False  # the discofuse card replaces " with a back-tick

    @property
    def location(self) -> str:
        return str(BUNDLED_DIR / self.name) if self.bundled else self.name

    def available_offline(self) -> bool:
        return self.bundled and (BUNDLED_DIR / self.name / "config.json").is_file()


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    description: str
    examples: tuple[str, ...]
    decoding: dict = field(default_factory=dict)
    checkpoints: tuple[CheckpointInfo, ...] = ()

    @property
    def default_checkpoint(self) -> CheckpointInfo | None:
        """The bundled checkpoint when there is one (works offline), else the first listed."""
        for ckpt in self.checkpoints:
            if ckpt.available_offline():
                return ckpt
        return self.checkpoints[0] if self.checkpoints else None


def _google(name: str, task: str, description: str, **kw) -> CheckpointInfo:
    return CheckpointInfo(f"google/{name}", task, description, **kw)


BEAM = {"num_beams": 4, "length_penalty": 1.0, "max_new_tokens": 96, "early_stopping": True}

TASKS: dict[str, Task] = {t.name: t for t in (
    Task(
        "sentence-fusion", "Sentence fusion",
        "Two sentences in, one fluent sentence out (DiscoFuse, or WikiSplit read backwards).",
        examples=(
            "The lighthouse was built in 1872 . <::::> It guided ships along the rocky coast for a century .",
            "Maria studied physics in Vienna . <::::> She later moved to Zurich to teach .",
            "The river floods every spring . <::::> Farmers plant rice on its banks after the water recedes .",
        ),
        decoding=BEAM,
        checkpoints=(
            CheckpointInfo("wikisplit-fusion-small", "sentence-fusion",
                           "bundled, trained here on WikiSplit (two sentences -> one); small and CPU-fast",
                           bundled=True, pretokenize=True),
            _google("roberta2roberta_L-24_discofuse", "sentence-fusion",
                    "robertaShare, 24 layers, DiscoFuse (paper: SARI 90.3)", replace_double_quotes=True),
        ),
    ),
    Task(
        "sentence-splitting", "Sentence splitting",
        "One long sentence in, two shorter ones out, joined by <::::> (WikiSplit).",
        examples=(
            "The bridge , which opened in 1932 , carries six lanes of traffic across the harbour .",
            "Ada Lovelace wrote the first published algorithm and she is often called the first programmer .",
            "The museum closed in 2019 for renovations , reopening two years later with a new wing .",
        ),
        decoding=BEAM,
        checkpoints=(
            CheckpointInfo("wikisplit-split-small", "sentence-splitting",
                           "bundled, trained here on WikiSplit (one sentence -> two); small and CPU-fast",
                           bundled=True, pretokenize=True),
            _google("roberta2roberta_L-24_wikisplit", "sentence-splitting",
                    "robertaShare, 24 layers, WikiSplit (paper: SARI 63.8)", add_special_tokens=True),
        ),
    ),
    Task(
        "summarization", "Summarization",
        "A news article in, a short summary or headline out.",
        examples=(
            "The city council voted on Tuesday to turn the old railway yard into a public park. "
            "Construction is expected to start next spring and cost about 12 million euros, "
            "paid partly by a regional grant. Residents had campaigned for green space for a decade.",
        ),
        decoding={"num_beams": 4, "length_penalty": 1.0, "max_new_tokens": 128, "no_repeat_ngram_size": 3},
        checkpoints=(
            _google("roberta2roberta_L-24_cnn_daily_mail", "summarization", "CNN/DailyMail, multi-sentence summaries"),
            _google("roberta2roberta_L-24_bbc", "summarization", "BBC XSum, one-sentence summaries"),
            _google("roberta2roberta_L-24_gigaword", "summarization", "Gigaword, headlines"),
        ),
    ),
    Task(
        "translation-en-de", "Translation en->de",
        "English in, German out (WMT14).",
        examples=("The weather will be sunny tomorrow, with light winds from the west.",),
        decoding={"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 128},
        checkpoints=(_google("bert2bert_L-24_wmt_en_de", "translation-en-de", "bert2bert, 24 layers, WMT14 en->de"),),
    ),
    Task(
        "translation-de-en", "Translation de->en",
        "German in, English out (WMT14).",
        examples=("Das Wetter wird morgen sonnig, mit leichtem Wind aus Westen.",),
        decoding={"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 128},
        checkpoints=(_google("bert2bert_L-24_wmt_de_en", "translation-de-en", "bert2bert, 24 layers, WMT14 de->en"),),
    ),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def all_checkpoints() -> list[CheckpointInfo]:
    return [c for t in TASKS.values() for c in t.checkpoints]


def checkpoint_info(name: str | os.PathLike) -> CheckpointInfo | None:
    """The registry entry for a bundled folder name, a bundled path (relative or not), or a hub id."""
    name = os.fspath(name)
    for ckpt in all_checkpoints():
        if name in (ckpt.name, ckpt.location) or (
                ckpt.bundled and os.path.realpath(name) == os.path.realpath(ckpt.location)):
            return ckpt
    return None


# Token ids come from the model itself; the rest of a checkpoint's settings are decoding choices.
_TOKEN_IDS = ("decoder_start_token_id", "eos_token_id", "pad_token_id")


def decoding_defaults(task: str, folder: str | os.PathLike | None = None) -> dict:
    """The task's decoding defaults under the checkpoint's own generation_config.json choices.

    A checkpoint tuned for its task knows better than the task's generic choice (the bundled
    split model's beam 8, length penalty 1.5 and required separator); the app prefills its
    controls with this and the evaluation runs with it. Raises CheckpointError on a corrupt file."""
    from .checkpoints import generation_defaults
    from .generation import SETTING_NAMES

    own = generation_defaults(folder)
    return {**get_task(task).decoding,
            **{k: v for k, v in own.items() if k in SETTING_NAMES and k not in _TOKEN_IDS}}


# ----------------------------------------------------------------------------------------
# Input conventions
# ----------------------------------------------------------------------------------------
def pretokenize(text: str) -> str:
    """Plain text -> WikiSplit style ("word , word ."), the form the bundled models saw."""
    text = text.replace(SEP, f" {SEP} ")
    parts = []
    for piece in text.split(SEP):
        piece = re.sub(r"([,.;:!?()\"])", r" \1 ", piece)
        piece = re.sub(r"(\w)'s\b", r"\1 's", piece)
        parts.append(" ".join(piece.split()))
    return f" {SEP} ".join(parts)


def detokenize(text: str) -> str:
    """WikiSplit style -> plain text: no space before , . ; : ! ? ) or after (."""
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return re.sub(r"\s+'s\b", "'s", text)


def prepare_input(text: str, ckpt: CheckpointInfo | None) -> str:
    """Applies a checkpoint's input conventions to user text."""
    if ckpt is None:
        return text
    if ckpt.replace_double_quotes:
        text = text.replace('"', "`")
    if ckpt.pretokenize:
        text = pretokenize(text)
    return text


def special_tokens(ckpt: CheckpointInfo | None) -> bool | None:
    """The pipeline's `add_special_tokens` for a checkpoint: True when its inputs are wrapped in
    bos/eos (the google wikisplit model), else None (the checkpoint folder's own convention)."""
    return True if ckpt is not None and ckpt.add_special_tokens else None


def plain_output(text: str, ckpt: CheckpointInfo | None) -> str:
    """A checkpoint's output as plain text: undoes the pretokenizing its inputs were given."""
    return detokenize(text) if ckpt is not None and ckpt.pretokenize else text


def split_sentences(output: str) -> list[str]:
    """A splitting model's output as separate sentences."""
    return [s.strip() for s in output.split(SEP) if s.strip()]
