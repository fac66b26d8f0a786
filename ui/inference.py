"""From user input to model output: checks, input conventions, streaming, the final result.

Shared by the Generate, Attention and Compare tabs. Errors meant for the user are ValueError
with a sentence; `user_errors` turns them (and anything unexpected) into gr.Error.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import gradio as gr
import numpy as np

from bertgen import tasks
from bertgen.checkpoints import CheckpointError

from . import decoding, models
from .settings import Settings

log = logging.getLogger(__name__)
_DONE = object()


def user_errors(fn):
    """Handlers raise ValueError for bad input; the user sees a sentence, never a stack trace."""
    def translate(err: Exception) -> gr.Error:
        if isinstance(err, (ValueError, CheckpointError, KeyError)):
            return gr.Error(str(err).strip("'\""))
        log.exception("handler %s failed", fn.__name__)
        return gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The app is still running; "
                        "try again or pick other settings.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:  # noqa: BLE001 - every failure becomes a message
                raise translate(err) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001
            raise translate(err) from None
    return wrapper


def check_text(text, settings: Settings) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("Type or pick an input text first.")
    if len(text) > settings.max_input_chars:
        raise ValueError(f"The input is {len(text):,} characters long; this app takes at most "
                         f"{settings.max_input_chars:,}. Shorten it.")
    return text.strip()


def check_task(task) -> str:
    if task not in tasks.TASKS:
        raise ValueError(f"Unknown task {task!r}; pick one of {', '.join(tasks.TASKS)}.")
    return task


@dataclass
class Output:
    """One generation as the UI shows it; plain data (numpy), so gr.State can copy it."""

    checkpoint: str
    task: str
    text: str  # the first returned sequence, in plain text
    texts: list[str]
    input_tokens: list[str]
    output_tokens: list[str]
    truncated: int  # input tokens cut to fit the model
    seconds: float
    new_tokens: int
    score: float | None
    cross_attention: np.ndarray | None = field(default=None, repr=False)
    encoder_attention: np.ndarray | None = field(default=None, repr=False)
    decoder_attention: np.ndarray | None = field(default=None, repr=False)

    @property
    def sentences(self) -> list[str]:
        return tasks.split_sentences(self.text) if tasks.SEP in self.text else [self.text]

    def stats(self) -> str:
        rate = self.new_tokens / self.seconds if self.seconds > 0 else 0.0
        score = f", score {self.score:.3f}" if self.score is not None else ""
        return f"{self.seconds:.2f} s, {self.new_tokens} new tokens, {rate:.1f} tokens/s{score}"

    def truncation_notice(self) -> str:
        if not self.truncated:
            return ""
        return (f"The input was cut: its last {self.truncated} tokens did not fit the model's "
                f"{len(self.input_tokens)}-token window.")


def visible_text(tokenizer, tokens: list[str]) -> str:
    """Generated tokens as text, keeping the sentence separator that skip_special_tokens drops."""
    hidden = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids = [i for i in (tokenizer.token_to_id(t) for t in tokens) if i is not None and i not in hidden]
    text = tokenizer.decode(ids, skip_special_tokens=False).replace(tasks.SEP, f" {tasks.SEP} ")
    return " ".join(text.split())


def _array(weights) -> np.ndarray | None:
    if weights is None:
        return None
    return weights.detach().float().cpu().numpy().astype(np.float16)  # half the memory; enough to plot


@dataclass
class Job:
    """One checkpoint, one input, one set of decoding settings, ready to run."""

    ckpt: models.Checkpoint
    loaded: models.Loaded
    task: str
    prepared: str  # the input after the checkpoint's text conventions
    settings: object  # GenerationSettings

    def stream(self) -> Iterator[str]:
        """Plain text so far, as decoding goes.

        Decoding runs in a thread of its own: Gradio resumes a handler's generator on varying
        worker threads, and torch's grad mode (inference_mode inside bertgen's stream) is
        per thread, so the decoding generator must start and finish on one thread."""
        texts: queue.Queue = queue.Queue()
        stop = threading.Event()

        def decode():
            try:
                for text in self.loaded.pipe.stream(self.prepared, self.settings):
                    texts.put(text)
                    if stop.is_set():
                        break
                texts.put(_DONE)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer
                texts.put(err)

        threading.Thread(target=decode, daemon=True, name="bertgen-stream").start()
        try:
            while (item := texts.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield tasks.plain_output(item, self.ckpt.info)
        finally:
            stop.set()  # the consumer went away (finished, cancelled): stop decoding

    def run(self) -> Output:
        """The whole result with attention (the final beam's), tokens and timing."""
        pipe = self.loaded.pipe
        result = pipe.run([self.prepared], settings=self.settings, attentions=True)[0]
        texts = [tasks.plain_output(visible_text(pipe.tokenizer, tokens), self.ckpt.info)
                 for tokens in result.output_tokens]
        return Output(
            checkpoint=self.ckpt.value, task=self.task, text=texts[0], texts=texts,
            input_tokens=list(result.input_tokens), output_tokens=list(result.output_tokens[0]),
            truncated=result.tokens_cut, seconds=float(result.seconds), new_tokens=result.new_tokens[0],
            score=result.score,
            cross_attention=_array(result.cross_attention),
            encoder_attention=_array(result.encoder_attentions),
            decoder_attention=_array(None if result.decoder_attentions is None else result.decoder_attentions[0]),
        )


def prepare(task, checkpoint, text, decoding_values: list, settings: Settings, progress=None) -> Job:
    """Checks everything the user gave, loads the model (cached), builds the settings."""
    task = check_task(task)
    text = check_text(text, settings)
    ckpt = models.resolve(checkpoint, settings)
    loaded = models.cache(settings).get(ckpt, settings.device, settings.dtype, progress=progress)
    gen = decoding.make_settings(loaded.pipe.model, task, decoding_values, settings.max_new_tokens)
    return Job(ckpt, loaded, task, tasks.prepare_input(text, ckpt.info), gen)
