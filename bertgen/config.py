"""Model configurations that read and write Hugging Face `config.json` files.

`BertGenerationConfig` describes one BERT stack (an encoder, or a decoder with
cross-attention); `EncoderDecoderConfig` nests two of them as `EncoderDecoderModel` does.
Values are checked on construction so that a bad or hostile config fails with a clear
message before a single weight is allocated.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

ACTIVATIONS = ("gelu", "relu", "silu", "gelu_new")

# Upper bounds that no real checkpoint comes near; they stop absurd configs before allocation.
LIMITS = {
    "vocab_size": 10_000_000,
    "hidden_size": 65_536,
    "num_hidden_layers": 1_024,
    "num_attention_heads": 1_024,
    "intermediate_size": 1_048_576,
    "max_position_embeddings": 1_048_576,
}
MAX_PARAMETERS = 40_000_000_000


class ConfigError(ValueError):
    """A configuration value that no model can be built from."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_bool(name: str, value) -> None:
    # JSON "false" or "no" is a truthy string: taking it as True would silently change the model.
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclass
class BertGenerationConfig:
    """One BERT stack, as `transformers.BertGenerationConfig` (same names and defaults)."""

    vocab_size: int = 50358
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 1
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    extra: dict = field(default_factory=dict, repr=False)

    model_type = "bert-generation"

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if not 1 <= value <= limit:
                raise ConfigError(f"{name}={value} is outside the sane range 1..{limit}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"unknown hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and 0 < self.layer_norm_eps < 1):
            raise ConfigError(f"layer_norm_eps must be in (0, 1), got {self.layer_norm_eps!r}")
        if not (_number(self.initializer_range) and self.initializer_range >= 0):
            raise ConfigError(f"initializer_range must be a number >= 0, got {self.initializer_range!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (_token_id(value) and value < self.vocab_size):
                raise ConfigError(f"{name}={value!r} is not a token id below vocab_size {self.vocab_size}")
        for name in ("use_cache", "is_decoder", "add_cross_attention", "tie_word_embeddings"):
            _check_bool(name, getattr(self, name))
        if self.num_parameters() > MAX_PARAMETERS:
            raise ConfigError(f"config asks for ~{self.num_parameters():,} parameters; refusing to allocate")

    def num_parameters(self) -> int:
        """Parameter count of this stack (embeddings, layers, LM head bias), computed, not allocated."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attention = 4 * h * h + 4 * h + 2 * h
        layer = attention * (2 if self.add_cross_attention else 1) + 2 * h * i + i + h + 2 * h
        head_bias = v if self.is_decoder else 0
        return v * h + self.max_position_embeddings * h + 2 * h + self.num_hidden_layers * layer + head_bias

    # --- HF config.json ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "BertGenerationConfig":
        """Accepts `bert-generation` and plain `bert` configs (the latter for warm starts)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        extra = {k: v for k, v in data.items() if k not in ("model_type",)}
        extra["source_model_type"] = data.get("model_type", cls.model_type)
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        keep = {k: v for k, v in self.extra.items() if k not in _DROP_ON_SAVE}
        out = {**keep, **out, "model_type": self.model_type}
        if self.is_decoder:
            out["architectures"] = ["BertGenerationDecoder"]
        else:
            out.setdefault("architectures", ["BertGenerationEncoder"])
            if out["architectures"] != ["BertGenerationEncoder"]:
                out["architectures"] = ["BertGenerationEncoder"]
        return out

    def as_decoder(self) -> "BertGenerationConfig":
        """A copy configured as a decoder with cross-attention (warm-starting bert2bert)."""
        data = self.to_dict()
        data.update(is_decoder=True, add_cross_attention=True)
        return BertGenerationConfig.from_dict(data)


# Plain BERT / bookkeeping keys that make no sense on a BertGeneration config.
_DROP_ON_SAVE = {"source_model_type", "type_vocab_size", "architectures", "transformers_version",
                 "_name_or_path", "torch_dtype", "dtype", "position_embedding_type",
                 "classifier_dropout", "gradient_checkpointing"}


@dataclass
class EncoderDecoderConfig:
    """An encoder and a decoder config plus the generation-level ids (`EncoderDecoderModel`)."""

    encoder: BertGenerationConfig
    decoder: BertGenerationConfig
    tie_encoder_decoder: bool = False
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False)

    model_type = "encoder-decoder"

    def __post_init__(self):
        if not (self.decoder.is_decoder and self.decoder.add_cross_attention):
            self.decoder = self.decoder.as_decoder()
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.decoder.bos_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.decoder.pad_token_id
        if self.eos_token_id is None:
            self.eos_token_id = self.decoder.eos_token_id
        _check_bool("tie_encoder_decoder", self.tie_encoder_decoder)
        if self.tie_encoder_decoder:
            for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size", "max_position_embeddings", "hidden_act"):
                if getattr(self.encoder, name) != getattr(self.decoder, name):
                    raise ConfigError(
                        f"tie_encoder_decoder needs identical encoder and decoder shapes; "
                        f"{name} is {getattr(self.encoder, name)} vs {getattr(self.decoder, name)}"
                    )
        for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (_token_id(value) and value < self.decoder.vocab_size):
                raise ConfigError(f"{name}={value!r} is not a token id below the decoder's vocab_size")

    def num_parameters(self) -> int:
        """Unique parameters: a tied model stores the shared stack once."""
        enc, dec = self.encoder.num_parameters(), self.decoder.num_parameters()
        if self.tie_encoder_decoder:
            return dec
        proj = self.encoder.hidden_size * self.decoder.hidden_size + self.decoder.hidden_size
        return enc + dec + (proj if self.encoder.hidden_size != self.decoder.hidden_size else 0)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderDecoderConfig":
        data = dict(data)
        for part in ("encoder", "decoder"):
            if part in data and not isinstance(data[part], dict):
                raise ConfigError(f"the {part} section must be a JSON object, got {type(data[part]).__name__}")
        try:
            encoder = BertGenerationConfig.from_dict(data.pop("encoder"))
            decoder = BertGenerationConfig.from_dict(data.pop("decoder"))
        except KeyError as missing:
            raise ConfigError(f"encoder-decoder config has no {missing} section") from None
        kwargs = {k: data.pop(k) for k in ("tie_encoder_decoder", "decoder_start_token_id",
                                            "pad_token_id", "eos_token_id") if k in data}
        return cls(encoder=encoder, decoder=decoder, **kwargs, extra=data)

    def to_dict(self) -> dict:
        keep = {k: v for k, v in self.extra.items() if k not in _DROP_ON_SAVE | {"model_type"}}
        encoder = self.encoder.to_dict()
        decoder = self.decoder.to_dict()
        return {
            **keep,
            "architectures": ["EncoderDecoderModel"],
            "model_type": self.model_type,
            "is_encoder_decoder": True,
            "encoder": encoder,
            "decoder": decoder,
            "tie_encoder_decoder": self.tie_encoder_decoder,
            "decoder_start_token_id": self.decoder_start_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
        }


AnyConfig = BertGenerationConfig | EncoderDecoderConfig


def config_from_dict(data: dict) -> AnyConfig:
    """Picks the config class from `model_type` (encoder-decoder, bert-generation or bert)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(f"model_type must be a string, got {model_type!r}")
    if model_type == "encoder-decoder" or ("encoder" in data and "decoder" in data):
        return EncoderDecoderConfig.from_dict(data)
    if model_type in ("bert-generation", "bert", "roberta", None):
        return BertGenerationConfig.from_dict(data)
    raise ConfigError(f"unsupported model_type {model_type!r}; expected encoder-decoder, bert-generation or bert")


def load_config(path: str | Path) -> AnyConfig:
    """Reads `config.json` (a file or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    try:
        return config_from_dict(data)
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def save_config(config: AnyConfig, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    tmp = path.with_name("config.json.tmp")  # a reader (or a crash) never sees half a file
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def parameter_bytes(config: AnyConfig, bytes_per_parameter: int = 4) -> int:
    return config.num_parameters() * bytes_per_parameter

