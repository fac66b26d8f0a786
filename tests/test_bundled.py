"""The bundled checkpoints ship, load in bertgen, transformers and the CLI, and do their task."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

import bertgen
from bertgen.tasks import BUNDLED_DIR, checkpoint_info, detokenize, get_task, prepare_input, split_sentences

from conftest import ROOT

BUNDLED = {"sentence-splitting": "wikisplit-split-small", "sentence-fusion": "wikisplit-fusion-small"}


@pytest.mark.parametrize("task, name", BUNDLED.items())
def test_bundled_checkpoint_is_the_offline_default(task, name):
    folder = BUNDLED_DIR / name
    assert (folder / "config.json").is_file(), f"{folder} is missing"
    assert get_task(task).default_checkpoint.name == name
    card = (folder / "README.md").read_text()
    assert "CC BY-SA 4.0" in card and "copy the input" in card and "bash scripts/build_bundled.sh" in card
    for path in folder.iterdir():
        assert path.stat().st_size <= 25 * 2**20, f"{path} is over 25 MB"


@pytest.fixture(scope="module")
def pipes():
    return {task: bertgen.pipeline("text2text-generation", model=BUNDLED_DIR / name)
            for task, name in BUNDLED.items()}


def test_fusion_model_fuses(pipes):
    info = get_task("sentence-fusion").default_checkpoint
    text = prepare_input("Maria studied physics in Vienna. <::::> She later moved to Zurich to teach.", info)
    out = pipes["sentence-fusion"](text)[0]["generated_text"]
    assert "<::::>" not in out and "Vienna" in out and "Zurich" in out


def test_split_model_output_keeps_the_separator(pipes):
    info = get_task("sentence-splitting").default_checkpoint
    text = prepare_input("The museum closed in 2019 for renovations, and it reopened two years later.", info)
    out = pipes["sentence-splitting"](text)[0]["generated_text"]
    assert "museum" in out
    # its generation_config.json requires the separator before EOS: always two sentences
    assert len(split_sentences(out)) == 2, out


def test_bundled_checkpoint_loads_in_transformers_with_the_same_logits():
    transformers = pytest.importorskip("transformers")
    folder = BUNDLED_DIR / BUNDLED["sentence-fusion"]
    ours = bertgen.load(folder)
    theirs = transformers.EncoderDecoderModel.from_pretrained(folder, dtype=torch.float32).eval()
    tok = bertgen.load_tokenizer(folder)
    enc = tok(["Two short sentences . <::::> They become one ."])
    dec = torch.tensor([[ours.config.decoder_start_token_id, 5, 6, 7]])
    with torch.no_grad():
        a = ours(enc["input_ids"], enc["attention_mask"], decoder_input_ids=dec).logits
        b = theirs(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=dec).logits
    assert (a - b).abs().max().item() < 1e-4


def test_cli_generates_with_a_bundled_checkpoint():
    folder = BUNDLED_DIR / BUNDLED["sentence-fusion"]
    proc = subprocess.run([sys.executable, "-m", "bertgen", "generate", "--model", str(folder), "--num-beams", "2"],
                          input="The river floods every spring . <::::> Farmers plant rice after the water recedes .\n",
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"river", proc.stdout), proc.stdout


def test_cli_gives_a_bundled_checkpoint_its_input_conventions_like_the_app(pipes):
    """Plain text in, plain text out: the bundled models were trained on WikiSplit-style text
    ("mat , it"), which the app and the evaluation produce for them; `--as-is` passes text as given."""
    folder = BUNDLED_DIR / BUNDLED["sentence-splitting"]
    relative = folder.relative_to(ROOT)
    info = checkpoint_info(relative)
    assert info is not None and info.pretokenize
    assert checkpoint_info(folder) is info and checkpoint_info(info.name) is info
    assert checkpoint_info(ROOT / "tests") is None
    text = "The cat sat on the mat, it was very happy."

    def run(*flags):
        proc = subprocess.run([sys.executable, "-m", "bertgen", "generate", "--model", str(relative), *flags, text],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.rstrip("\n")

    pipe = pipes["sentence-splitting"]
    as_app = detokenize(pipe(prepare_input(text, info))[0]["generated_text"])
    assert run() == as_app
    assert run("--as-is") == pipe(text)[0]["generated_text"] != as_app
    assert " ." not in as_app and "<::::>" in as_app


def test_cli_can_switch_off_the_split_models_required_separator():
    folder = BUNDLED_DIR / BUNDLED["sentence-splitting"]
    text = "The river floods every spring ."  # needs no split

    def run(*flags):
        proc = subprocess.run([sys.executable, "-m", "bertgen", "generate", "--model", str(folder), *flags, text],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert "<::::>" in run()  # the checkpoint's generation_config requires the separator
    assert "<::::>" not in run("--required-token-id", "none")


def test_pipeline_switches_off_the_required_separator_with_unset():
    from bertgen.generation import UNSET
    pipe = bertgen.pipeline("text2text-generation", model=str(BUNDLED_DIR / BUNDLED["sentence-splitting"]))
    text = "The river floods every spring ."
    assert pipe.settings(required_token_id=UNSET).required_token_id is None
    assert pipe.settings(required_token_id=None).required_token_id is not None  # None: "not given"
    assert "<::::>" in pipe(text)[0]["generated_text"]
    assert "<::::>" not in pipe(text, required_token_id=UNSET)[0]["generated_text"]

def test_evaluation_can_switch_off_the_split_models_required_separator(tmp_path, capsys):
    """`python -m evaluation run --required-token-id none`: the run records the setting as off
    (a run of its own, not the default's) and its predictions end unsplit."""
    from evaluation.__main__ import main
    from evaluation.runs import load_runs
    data = tmp_path / "one.tsv"
    data.write_text("The river floods every spring .\tThe river floods every spring . <::::> It is wet .\n")
    base = ["run", "--model", str(BUNDLED_DIR / BUNDLED["sentence-splitting"]), "--benchmark", "wikisplit",
            "--data-files", str(data), "--output", str(tmp_path / "runs"), "--quiet"]
    assert main(base) == 0 and main(base + ["--required-token-id", "none"]) == 0
    default, off = sorted(load_runs(tmp_path / "runs"), key=lambda r: r.settings["required_token_id"] is None)
    assert default.settings["required_token_id"] is not None and off.settings["required_token_id"] is None
    assert default.run_id != off.run_id
    (split,), (unsplit,) = ([json.loads(line)["prediction"] for line in r.predictions_path.read_text().splitlines()]
                            for r in (default, off))
    assert "<::::>" in split and "<::::>" not in unsplit
    with pytest.raises(SystemExit) as exit_info:  # neither a token id nor "none"
        main(base + ["--required-token-id", "sep"])
    assert exit_info.value.code == 2 and "want a token id or 'none'" in capsys.readouterr().err
