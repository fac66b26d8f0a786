"""bertgen: BertGeneration encoder-decoder models (Rothe, Narayan, Severyn 2019) in PyTorch.

Checkpoint-compatible with the Hugging Face format; see README.md for the API."""

from .checkpoints import CheckpointError, load, save, warm_start
from .config import BertGenerationConfig, ConfigError, EncoderDecoderConfig
from .modeling import BertGenerationDecoder, BertGenerationEncoder, EncoderDecoderModel
from .pipeline import Text2TextPipeline, pipeline
from .tokenization import load_tokenizer, train_sentencepiece

__version__ = "0.1.0"
__all__ = ["BertGenerationConfig", "EncoderDecoderConfig", "ConfigError", "CheckpointError",
           "BertGenerationEncoder", "BertGenerationDecoder", "EncoderDecoderModel",
           "load", "save", "warm_start", "pipeline", "Text2TextPipeline", "load_tokenizer",
           "train_sentencepiece"]
