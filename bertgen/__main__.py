"""Command line: `python -m bertgen <command> ...`.

  generate  text -> text with a checkpoint (one input per stdin line when no text is given)
  train     fine-tune from a checkpoint, a plain BERT (warm start) or random init; resumable
  convert   load a checkpoint and write it back in the Hugging Face layout (bertgen.save)

Each command is a function `add_<name>(subparsers)` that registers its parser and handler;
errors become one line on stderr and exit code 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys

from .generation import UNSET
from .pipeline import QUANTIZATIONS


def token_id_or_unset(value: str):
    """argparse type of a token-id flag: an int, or UNSET to switch the checkpoint's value off."""
    if value.lower() == UNSET:
        return UNSET
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a token id or '{UNSET}', got {value!r}") from None


SETTING_FLAGS = (  # (name, type, help) for GenerationSettings fields
    ("max_new_tokens", int, "most tokens to generate (default 64, or the checkpoint's)"),
    ("max_length", int, "most decoder tokens, the start token included (HF semantics)"),
    ("min_length", int, "fewest decoder tokens before EOS, the start token included"),
    ("min_new_tokens", int, "fewest generated tokens before EOS"),
    ("num_beams", int, "beam width (1: greedy or sampling)"),
    ("length_penalty", float, "beam score = sum of log-probs / length ** length_penalty"),
    ("num_return_sequences", int, "outputs per input (<= num_beams; or with --do-sample)"),
    ("no_repeat_ngram_size", int, "forbid repeating n-grams of this size"),
    ("repetition_penalty", float, "penalise tokens already generated (1.0: off)"),
    ("temperature", float, "sampling temperature"),
    ("top_k", int, "sample from the k most likely tokens (0: all)"),
    ("top_p", float, "sample from the smallest set with this probability mass"),
    ("seed", int, "random seed for sampling (reproducible output)"),
    ("cache_dtype", str, "store the KV caches in float32, bfloat16 or float16 (default: the model's dtype; "
     "half precision halves their memory)"),
    ("required_token_id", token_id_or_unset, "no EOS before this token id was generated (split models: the <::::> "
     "id); 'none' switches off the checkpoint's"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints usage too)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _early_stopping(value: str):
    table = {"true": True, "false": False, "never": "never"}
    if value.lower() not in table:
        raise argparse.ArgumentTypeError("choose true, false or never")
    return table[value.lower()]


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError("choose true or false")


# ----------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------
def add_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text with a checkpoint",
                              description="Generate text. With no TEXT, reads one input per line "
                                          "from stdin and writes one output per line.")
    p.add_argument("text", nargs="?", help="the input text (default: read lines from stdin)")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id (owner/name)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="int8 (CPU), bf16-weights (CPU: weights in bf16, math in fp32) or 4bit (CUDA, bitsandbytes)")
    p.add_argument("--batch-size", type=int, default=16, help="inputs decoded together (default 16)")
    p.add_argument("--json", action="store_true", help="one JSON object per input: text, score, seconds ...")
    p.add_argument("--as-is", action="store_true",
                   help="pass inputs and outputs unchanged (default: a known checkpoint's input conventions, "
                        "as in the app: the bundled models get WikiSplit-style spacing in and plain text out)")
    p.add_argument("--add-special-tokens", type=_bool, default=None,
                   help="wrap inputs in the tokenizer's special tokens (default: the checkpoint's convention)")
    p.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy/beam")
    p.add_argument("--early-stopping", type=_early_stopping, help="beam search: true, false or never")
    for name, kind, text in SETTING_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from .pipeline import pipeline
    from .tasks import checkpoint_info, plain_output, prepare_input, special_tokens

    settings = {name: getattr(args, name) for name, _, _ in SETTING_FLAGS}
    settings.update(do_sample=args.do_sample, early_stopping=args.early_stopping)
    info = None if args.as_is else checkpoint_info(args.model)  # what the app and the evaluation apply
    pipe = pipeline("text2text-generation", model=args.model, device=args.device, dtype=args.dtype,
                    quantize=args.quantize, batch_size=args.batch_size,
                    add_special_tokens=(special_tokens(info) if args.add_special_tokens is None
                                        else args.add_special_tokens))
    # bad settings fail before any input is read
    chosen = pipe.settings(**settings)
    texts = [args.text] if args.text is not None else read_lines(sys.stdin)
    chunk = args.batch_size * 8  # outputs appear chunk by chunk, not only at the end
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        for text, result in zip(part, pipe.run([prepare_input(t, info) for t in part], settings=chosen)):
            outputs = [plain_output(t, info) for t in result.texts]
            if args.json:
                record = {"input": text, "text": outputs[0], "score": result.score,
                          "seconds": round(result.seconds, 4), "new_tokens": result.new_tokens[0],
                          "truncated": result.truncated}
                if len(outputs) > 1:
                    record.update(texts=outputs, scores=result.scores)
                print(_json_line(record))
            else:
                print("\t".join(_text_line(t) for t in outputs))
        sys.stdout.flush()
    return 0


# Characters str.splitlines() breaks at besides \n; JSON leaves three of them unescaped.
_LINE_BREAKS = {c: " " for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_JSON_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_line(record: dict) -> str:
    """A JSON record on one physical line, whatever the reader splits lines at (values unchanged)."""
    return json.dumps(record, ensure_ascii=False).translate(str.maketrans(_JSON_BREAKS))


def _text_line(text: str) -> str:
    """An output text on one physical line: line breaks and tabs become spaces."""
    return text.replace("\n", " ").replace("\t", " ").translate(str.maketrans(_LINE_BREAKS))


def read_lines(stream) -> list[str]:
    """One input per line: split on newlines only (not on the other characters str.splitlines
    breaks at, so outputs stay aligned with input lines), strictly UTF-8, no blank lines."""
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8", "surrogateescape")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            text = line.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"stdin line {number} is not valid UTF-8 ({err.reason} at byte {err.start})") from None
        if not text.strip():
            raise ValueError(f"stdin line {number} is empty: give one input per line")
        texts.append(text)
    return texts


# ----------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------
def add_convert(subparsers) -> None:
    p = subparsers.add_parser("convert", help="load a checkpoint and save it in the HF layout",
                              description="Load SOURCE (folder or hub id) with bertgen and write it to "
                                          "DEST: config.json, generation_config.json, model.safetensors, "
                                          "tokenizer files.")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the saved weights")
    p.add_argument("--omit-tied", action="store_true",
                   help="write tied encoder/decoder weights once (bertgen restores them; transformers 5 does not)")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from . import checkpoints

    model = checkpoints.load(args.source)
    checkpoints.save(model, args.dest, generation_config=checkpoints.generation_defaults(model.source_dir),
                     omit_tied=args.omit_tied, dtype=args.dtype)
    checkpoints.copy_tokenizer_files(model.source_dir, args.dest)
    print(args.dest)
    return 0


# ----------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------
def add_train(subparsers) -> None:
    from .training import add_train_arguments

    p = subparsers.add_parser("train", help="fine-tune (warm start, random init or a checkpoint); resumable",
                              description="Fine-tune a BertGeneration model. Rerunning the same command "
                                          "resumes a killed run from its last saved step.")
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from .training import train

    print(train(args))
    return 0


# ----------------------------------------------------------------------------------------
# Other commands: write `add_<name>(subparsers)` and list it here.
# ----------------------------------------------------------------------------------------
COMMANDS = [add_generate, add_train, add_convert]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bertgen", description="BertGeneration models from the command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`
        return 0
    except Exception as err:  # one clear line, no stack trace
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        sys.stderr.write(f"bertgen {args.command}: error: {message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
