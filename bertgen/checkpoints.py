"""Load and save Hugging Face format checkpoints; warm-start BertGeneration from plain BERT.

A checkpoint is a folder (or a hub id resolved to one) holding `config.json` and weights in
`model.safetensors` (optionally sharded with an index) or `pytorch_model.bin`. Pickled weights
are read only through `torch.load(weights_only=True)`. A checkpoint whose keys do not fit the
model is an error that names the keys: a silently half-random model is worse than no model.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import (BertGenerationConfig, ConfigError, EncoderDecoderConfig, AnyConfig,
                     load_config, parameter_bytes, save_config)
from .modeling import (TIED_LAYER_PARTS, BertGenerationDecoder, BertGenerationEncoder,
                       EncoderDecoderModel)

# owner/name as the hub spells them: parts start and end with a letter, digit or "_" and hold
# no "..", so that "./x" or "../x" (a missing local folder) never reads as a hub id.
HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_](?:[\w.-]*\w)?/[A-Za-z0-9_](?:[\w.-]*\w)?$", re.ASCII)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer_config.json", "special_tokens_map.json")
Model = EncoderDecoderModel | BertGenerationEncoder | BertGenerationDecoder


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read, or fitted to its model."""


# ----------------------------------------------------------------------------------------
# Finding a checkpoint
# ----------------------------------------------------------------------------------------
def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id downloaded (weights, config, tokenizer)."""
    name = str(name_or_path)
    if not name.strip():  # Path("") is ".": an empty textbox must not load the working directory
        raise CheckpointError("no checkpoint given: pass a checkpoint folder or a hub id (owner/name)")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if not HUB_ID.match(name):
        raise CheckpointError(f"{name!r} is neither a checkpoint folder nor a hub id (owner/name)")
    return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    patterns = ["config.json", "generation_config.json", *TOKENIZER_FILES]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision,
                                        allow_patterns=patterns + ["model.safetensors*", "model-*.safetensors"]))
        if not any((folder / f).exists() for f in WEIGHT_FILES):
            folder = Path(snapshot_download(repo_id, revision=revision,
                                            allow_patterns=patterns + ["pytorch_model*.bin*"]))
    except HFValidationError as err:
        raise CheckpointError(f"{repo_id!r} is not a valid hub id: {err}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise CheckpointError(f"hub has no checkpoint {repo_id!r} (revision {revision or 'main'}): "
                              f"{type(err).__name__}") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} is not a local folder and cannot be downloaded: the hub is unreachable or "
            f"offline mode is on (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}) and it is "
            f"not in the local cache. Connect to the internet or pass a checkpoint folder.") from None
    except OSError as err:
        raise CheckpointError(f"could not download {repo_id!r}: {err}") from None
    return folder


# ----------------------------------------------------------------------------------------
# Reading weights
# ----------------------------------------------------------------------------------------
def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, preferring safetensors; never unpickles code."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".index.json"):
                return _read_sharded(path)
            return _read_file(path)
    raise CheckpointError(f"no weights in {folder}: looked for {', '.join(WEIGHT_FILES)}")


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{index_path}: not a valid shard index ({type(err).__name__}: {err})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: weight_map must map tensor names to shard file names")
    state = {}
    for shard in sorted(set(weight_map.values())):
        # A shard is a plain file name beside the index (no folder part, no `..`, not absolute).
        # The file itself may be a symlink elsewhere: the hub cache links snapshot files to blobs/.
        if not shard or Path(shard).name != shard or shard in (".", "..") or "\\" in shard:
            raise CheckpointError(f"{index_path}: shard {shard!r} points outside the checkpoint folder")
        state.update(_read_file(index_path.parent / shard))
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds more than plain tensors, and loading it "
            f"could run code. Convert it to safetensors from a trusted source. ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable PyTorch weights file ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return state


# ----------------------------------------------------------------------------------------
# Fitting a state dict to a model
# ----------------------------------------------------------------------------------------
def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old names (LayerNorm gamma/beta), stale buffers (position_ids), HF's duplicate LM bias."""
    out = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        out[key] = tensor
    for key in [k for k in out if k.endswith("lm_head.decoder.bias")]:
        bias_key = key.replace("lm_head.decoder.bias", "lm_head.bias")
        bias = out.pop(key)
        out.setdefault(bias_key, bias)
    return out


def tied_key_pairs(model: EncoderDecoderModel) -> list[tuple[str, str]]:
    """(encoder key, decoder key) for every weight `tie_encoder_decoder` shares."""
    pairs = []
    for key in model.encoder.state_dict():
        dec_key = None
        if key.startswith("embeddings."):
            dec_key = "decoder.bert." + key
        else:
            m = re.match(r"encoder\.layer\.\d+\.(\w+)\.", key)
            if m and m.group(1) in TIED_LAYER_PARTS:
                dec_key = "decoder.bert." + key
        if dec_key:
            pairs.append(("encoder." + key, dec_key))
    return pairs


def _fill_tied(model: Model, state: dict[str, torch.Tensor]) -> None:
    """Fill weights a checkpoint may omit because they are tied to ones it has."""
    if isinstance(model, EncoderDecoderModel) and model.config.tie_encoder_decoder:
        for enc_key, dec_key in tied_key_pairs(model):
            if enc_key not in state and dec_key in state:
                state[enc_key] = state[dec_key]
            elif dec_key not in state and enc_key in state:
                state[dec_key] = state[enc_key]
            elif enc_key in state and dec_key in state:
                state[enc_key] = state[dec_key]  # HF ties the encoder to the decoder's weights
    decoder, prefix = _decoder_of(model)
    if decoder is not None and decoder.config.tie_word_embeddings:
        emb = f"{prefix}bert.embeddings.word_embeddings.weight"
        if emb in state:
            state[f"{prefix}lm_head.decoder.weight"] = state[emb]


def _decoder_of(model: Model) -> tuple[BertGenerationDecoder | None, str]:
    if isinstance(model, EncoderDecoderModel):
        return model.decoder, "decoder."
    if isinstance(model, BertGenerationDecoder):
        return model, ""
    return None, ""


def _strip_prefix(model: Model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder saved inside a wrapper (`bert.` prefix) still loads as an encoder."""
    if isinstance(model, BertGenerationEncoder) and not any(k.startswith("embeddings.") for k in state):
        for prefix in ("bert.", "encoder.", "model."):
            if any(k.startswith(prefix + "embeddings.") for k in state):
                return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_state_into(model: Model, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copies `state` into `model`; any missing, unexpected or mis-shaped key is an error."""
    state = fit_state_dict(model, state, source)
    with torch.no_grad():
        for key, target in model.state_dict().items():
            target.copy_(state[key])


def fit_state_dict(model: Model, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """`state` renamed to `model`'s keys (tied copies filled in); CheckpointError naming every
    missing, unexpected or mis-shaped key. Works on a meta-device model (no memory needed)."""
    state = _strip_prefix(model, _normalise_keys(state))
    if isinstance(model, BertGenerationEncoder):
        state = fold_bert_layout(state)
    _fill_tied(model, state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                        for k, v in expected.items() if k in state and state[k].shape != v.shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            problems.append(f"{label} keys: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not fit a {type(model).__name__} of its config.json; "
                              + "; ".join(problems))
    return state


# ----------------------------------------------------------------------------------------
# Building models
# ----------------------------------------------------------------------------------------
def build_model(config: AnyConfig, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, init: bool = True) -> Model:
    """A model for `config`; with init=False the weights are left uninitialised (for loading)."""
    if isinstance(config, EncoderDecoderConfig):
        cls = EncoderDecoderModel
    elif config.is_decoder:
        cls = BertGenerationDecoder
    else:
        cls = BertGenerationEncoder
    if init:
        return cls(config).to(device=device, dtype=dtype)
    with torch.device("meta"):
        model = cls(config, init=False)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights() if hasattr(model, "tie_weights") else None
    return model


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: torch.dtype | str | None = None, revision: str | None = None) -> Model:
    """Loads a checkpoint folder or hub id; returns the model in eval mode.

    `model.source_dir` remembers the folder so tokenizers and generation defaults can be found."""
    folder = resolve(name_or_path, revision)
    try:
        config = load_config(folder)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no config.json: not a checkpoint folder") from None
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    state = read_state_dict(folder)
    dtype = _dtype(dtype) or torch.float32
    # A config.json that asks for a far bigger model than its weights hold is refused at once;
    # then the weights are checked key by key on a meta-device skeleton (no memory allocated).
    stored = sum(t.numel() for t in state.values())
    if config.num_parameters() > 2 * stored + 1_000_000:
        raise CheckpointError(f"{folder}/config.json asks for ~{config.num_parameters():,} parameters but its "
                              f"weights hold {stored:,}: the config does not belong to these weights")
    state = fit_state_dict(build_model(config, device="meta", dtype=dtype, init=False), state, str(folder))
    try:
        model = build_model(config, device=device, dtype=dtype, init=False)
    except (RuntimeError, MemoryError) as err:
        if "alloc" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        raise CheckpointError(f"{folder}: not enough memory for {config.num_parameters():,} parameters "
                              f"({parameter_bytes(config, dtype.itemsize) / 2**30:.1f} GiB in {dtype})") from None
    load_state_into(model, state, source=str(folder))
    model.eval()
    model.source_dir = folder
    model.name_or_path = str(name_or_path)
    return model


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


# ----------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------
def export_state_dict(model: Model, omit_tied: bool = False,
                      dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict as transformers writes it: no LM-head copy of the word embeddings;
    tied encoder/decoder weights written twice (transformers 5 no longer re-ties them on
    load) unless `omit_tied`, which keeps only the encoder's copy (bertgen restores it)."""
    state = dict(model.state_dict())
    decoder, prefix = _decoder_of(model)
    if decoder is not None and decoder.config.tie_word_embeddings:
        state.pop(f"{prefix}lm_head.decoder.weight", None)
    if omit_tied and isinstance(model, EncoderDecoderModel) and model.config.tie_encoder_decoder:
        for _, dec_key in tied_key_pairs(model):
            state.pop(dec_key, None)
    seen: dict[int, str] = {}
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu", dtype=dtype or tensor.dtype)
        ptr = tensor.data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor.contiguous()
        seen.setdefault(ptr, key)
    return out


def save(model: Model, folder: str | os.PathLike, tokenizer=None, generation_config: dict | None = None,
         omit_tied: bool = False, dtype: torch.dtype | str | None = None) -> Path:
    """Writes config.json, generation_config.json, model.safetensors (+ tokenizer files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    # The slow part first, into a temporary file: dying there leaves an existing checkpoint in
    # this folder as it was (its config.json included); then each file is swapped in whole.
    tmp = folder / "model.safetensors.tmp"
    try:
        save_file(export_state_dict(model, omit_tied, _dtype(dtype)), tmp, metadata={"format": "pt"})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    save_config(config, folder)
    save_generation_config(config, folder, generation_config)
    tmp.replace(folder / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def save_generation_config(config: AnyConfig, folder: str | os.PathLike, settings: dict | None = None) -> Path:
    """Writes generation_config.json: the config's token ids, then `settings` (decoding defaults)."""
    gen = {"decoder_start_token_id": getattr(config, "decoder_start_token_id", None),
           "bos_token_id": _top(config, "bos_token_id"), "eos_token_id": _top(config, "eos_token_id"),
           "pad_token_id": _top(config, "pad_token_id"), **(settings or {})}
    gen = {k: v for k, v in gen.items() if v is not None}
    path = Path(folder) / "generation_config.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def _top(config: AnyConfig, name: str):
    if isinstance(config, EncoderDecoderConfig):
        return getattr(config, name, None) if name != "bos_token_id" else config.decoder.bos_token_id
    return getattr(config, name)


def generation_defaults(folder: str | os.PathLike | None) -> dict:
    """Decoding settings a checkpoint ships in generation_config.json (empty when none)."""
    if folder is None:
        return {}
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    return {k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"}


# ----------------------------------------------------------------------------------------
# Warm start from plain BERT (the paper's recipe)
# ----------------------------------------------------------------------------------------
def fold_bert_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BertModel weights -> BertGenerationEncoder weights.

    Drops the pooler and pre-training heads; BertModel adds token-type embedding 0 to every
    position, so folding it into the position embeddings gives exactly the same outputs."""
    if not any(k.startswith("bert.") for k in state) and "embeddings.token_type_embeddings.weight" not in state:
        return state
    if any(k.startswith("bert.") for k in state):
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    state = {k: v for k, v in state.items() if not k.startswith(("pooler.", "cls."))}
    token_types = state.pop("embeddings.token_type_embeddings.weight", None)
    if token_types is not None:
        key = "embeddings.position_embeddings.weight"
        state[key] = state[key] + token_types[0]
    return state


RECIPES = ("bert2rnd", "bert2bert", "bertShare")


def warm_start(bert: str | os.PathLike, recipe: str = "bertShare", *,
               num_hidden_layers: int | None = None, seed: int = 0,
               dropout: float | None = None) -> EncoderDecoderModel:
    """An EncoderDecoderModel from a plain BERT checkpoint (the paper's warm start).

    bert2rnd: BERT encoder, random decoder; bert2bert: BERT in both, separate copies;
    bertShare: one BERT shared by encoder and decoder. Cross-attention always starts random.
    `num_hidden_layers` keeps only the first layers (a smaller model from the same weights)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown warm-start recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    folder = resolve(bert)
    bert_config = load_config(folder)
    if isinstance(bert_config, EncoderDecoderConfig):
        raise CheckpointError(f"{folder} is already an encoder-decoder model; load() it instead")
    data = bert_config.to_dict()
    data.update(is_decoder=False, add_cross_attention=False)
    if num_hidden_layers is not None:
        data["num_hidden_layers"] = num_hidden_layers
    if dropout is not None:
        data.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    enc_config = BertGenerationConfig.from_dict(data)
    tokens = {"bos_token_id": enc_config.bos_token_id, "eos_token_id": enc_config.eos_token_id,
              "pad_token_id": enc_config.pad_token_id, **_bert_special_ids(folder)}
    for key, value in tokens.items():
        setattr(enc_config, key, value)
    config = EncoderDecoderConfig(encoder=enc_config, decoder=enc_config.as_decoder(),
                                  tie_encoder_decoder=recipe == "bertShare",
                                  decoder_start_token_id=tokens["bos_token_id"],
                                  pad_token_id=tokens["pad_token_id"], eos_token_id=tokens["eos_token_id"])
    torch.manual_seed(seed)
    model = EncoderDecoderModel(config)
    state = fold_bert_layout(_normalise_keys(read_state_dict(folder)))
    keep = enc_config.num_hidden_layers
    state = {k: v for k, v in state.items()
             if not (m := re.match(r"encoder\.layer\.(\d+)\.", k)) or int(m.group(1)) < keep}
    load_state_into(model.encoder, state, source=f"{folder} (as encoder)")
    if recipe == "bert2bert":
        dec_state = {k: v for k, v in model.decoder.state_dict().items() if "crossattention" in k or "lm_head" in k}
        dec_state.update({"bert." + k: v.clone() for k, v in model.encoder.state_dict().items()})
        load_state_into(model.decoder, dec_state, source=f"{folder} (as decoder)")
    model.tie_weights()
    model.source_dir = folder
    return model


def trim_vocabulary(bert: str | os.PathLike, texts, out_dir: str | os.PathLike, min_count: int = 1,
                    new_tokens: tuple[str, ...] = ()) -> Path:
    """A copy of a plain WordPiece BERT folder that keeps only the vocabulary `texts` use.

    The output layer of a small BERT is most of its cost (MiniLM: 30,522 rows of 384), and a
    task's text uses a fraction of them. Kept: every token the texts are split into, every
    special token and every single character (with and without `##`), so that any other text
    still tokenizes, in smaller pieces, and tokens the texts use split exactly as before.
    Embedding rows are copied in the original order; nothing is retrained. `new_tokens` (e.g.
    WikiSplit's `<::::>`, which WordPiece would cut into six pieces) are appended as whole,
    non-special tokens (so decoding keeps them), their rows starting as copies of [SEP]'s."""
    from tokenizers import AddedToken
    from .tokenization import _added_tokens_config, _read_json as read_json, load_tokenizer
    folder = resolve(bert)
    vocab_file = folder / "vocab.txt"
    if not vocab_file.is_file():
        raise CheckpointError(f"{folder} has no WordPiece vocab.txt to trim")
    vocab = vocab_file.read_text(encoding="utf-8").splitlines()
    tokenizer = load_tokenizer(folder)
    counts = collections.Counter(i for text in texts for i in tokenizer.encode(text, add_special_tokens=False))
    used = {i for i, n in counts.items() if n >= min_count}
    used |= {i for i in tokenizer.all_special_ids if i is not None}
    used |= {i for i, tok in enumerate(vocab) if len(tok.removeprefix("##")) == 1}
    new_tokens = [t for t in new_tokens if t not in vocab]
    keep = sorted(used)
    rows = torch.tensor(keep + [tokenizer.sep_token_id] * len(new_tokens))
    state = read_state_dict(folder)
    trimmed = {k: (v.index_select(0, rows).contiguous()
                   if (k.endswith("word_embeddings.weight") or k.startswith(("cls.predictions", "bert.cls")))
                   and v.shape[0] == len(vocab) else v)
               for k, v in state.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = len(keep) + len(new_tokens)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "vocab.txt").write_text("".join(vocab[i] + "\n" for i in keep) + "".join(t + "\n" for t in new_tokens),
                                   encoding="utf-8")
    # not tokenizer.json: it holds the old vocabulary
    tok_config = read_json(folder / "tokenizer_config.json")
    tok_config["added_tokens_decoder"] = _added_tokens_config(
        {len(keep) + n: AddedToken(t, special=False, normalized=False) for n, t in enumerate(new_tokens)})
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    if (folder / "special_tokens_map.json").is_file():
        shutil.copy(folder / "special_tokens_map.json", out / "special_tokens_map.json")
    tmp = out / "model.safetensors.tmp"  # the weights last, whole: their presence marks a complete folder
    save_file(trimmed, tmp, metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    return out


def _bert_special_ids(folder: Path) -> dict[str, int]:
    """[CLS] starts decoding, [SEP] ends it, [PAD] pads (BERT WordPiece vocabularies)."""
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        return {}
    ids = {tok: i for i, tok in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
    wanted = {"bos_token_id": "[CLS]", "eos_token_id": "[SEP]", "pad_token_id": "[PAD]"}
    missing = [tok for tok in wanted.values() if tok not in ids]
    if missing:
        raise CheckpointError(f"{vocab} lacks {', '.join(missing)}")
    return {key: ids[tok] for key, tok in wanted.items()}


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies whatever tokenizer files `src` has into `dst`."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            Path(dst).mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
