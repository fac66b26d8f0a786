"""The Generate tab: task, checkpoint, decoding settings, a streamed output and what the model saw."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from bertgen import tasks

from . import decoding, models
from .gpu import gpu
from .inference import Output, prepare, user_errors
from .settings import Settings

TASK_CHOICES = [(t.title, t.name) for t in tasks.TASKS.values()]
DEFAULT_TASK = "sentence-fusion"


def task_markdown(task: str) -> str:
    t = tasks.get_task(task)
    return f"**{t.title}**: {t.description}  \n{models.note_markdown(task)}"


def checkpoint_update(task: str, settings: Settings) -> dict:
    return gr.update(choices=models.choices_for(task, settings), value=models.default_checkpoint(task, settings))


def details_markdown(out: Output) -> str:
    """Split outputs as separate sentences; further returned sequences as a list."""
    parts = []
    if not out.text.strip():
        parts.append(f"*The model wrote no visible text ({out.new_tokens} tokens, all blank or special); "
                     "see its tokens in the Attention tab.*")
    if len(out.sentences) > 1:
        parts.append("**Sentences**\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(out.sentences, 1)))
    if len(out.texts) > 1:
        parts.append("**All returned outputs**\n\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(out.texts, 1)))
    return "\n\n".join(parts)


def seen_markdown(out: Output) -> str:
    notice = out.truncation_notice()
    return f"The model saw **{len(out.input_tokens)} tokens**." + (f" **{notice}**" if notice else "")


@dataclass
class GenerateTab:
    task: gr.Radio
    checkpoint: gr.Dropdown
    text: gr.Textbox
    result: gr.State  # the last Output, read by the Attention tab
    event: object  # the generate event (others chain on it)


def build(settings: Settings) -> GenerateTab:
    task0 = DEFAULT_TASK
    with gr.Row():
        task = gr.Radio(TASK_CHOICES, value=task0, label="Task", elem_id="task", scale=3)
        # open to any value: models.resolve is the check (see there)
        checkpoint = gr.Dropdown(models.choices_for(task0, settings), value=models.default_checkpoint(task0, settings),
                                 label="Checkpoint", elem_id="checkpoint", scale=2,
                                 allow_custom_value=True,
                                 info="or type any owner/name hub id" if settings.allow_any_hub_id else None)
    about = gr.Markdown(task_markdown(task0), elem_id="task_about")
    text = gr.Textbox(label="Input", lines=3, elem_id="input_text", max_length=settings.max_input_chars,
                      placeholder="Type a text, or pick an example below. Separate sentences with <::::> for fusion.")
    examples = gr.Dataset(components=[text], samples=[[e] for e in tasks.get_task(task0).examples],
                          label="Examples", elem_id="examples")
    with gr.Accordion("Decoding settings", open=False):
        controls = decoding.build_controls(settings.max_new_tokens)
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="generate_btn")
        stop = gr.Button("Stop", elem_id="generate_stop")
    output = gr.Textbox(label="Output", lines=3, elem_id="output_text", interactive=False,
                        buttons=["copy"])
    details = gr.Markdown(elem_id="output_details")
    stats = gr.Markdown(elem_id="stats")
    with gr.Accordion("The input as the model saw it", open=False):
        seen = gr.Markdown(elem_id="input_seen")
        tokens = gr.Textbox(label="Input tokens", lines=2, interactive=False, elem_id="input_tokens")
    result = gr.State(None)

    task.change(lambda t: (checkpoint_update(t, settings), task_markdown(t),
                           gr.update(samples=[[e] for e in tasks.get_task(t).examples]), ""),
                task, [checkpoint, about, examples, text], api_visibility="private")
    checkpoint.change(lambda t, c: decoding.values_for(t, c, settings), [task, checkpoint],
                      controls.components(), api_visibility="private")
    examples.click(lambda sample: sample[0], examples, text, api_visibility="private")

    @gpu
    @user_errors
    def generate(task, checkpoint, text, *values, progress=gr.Progress()):
        job = prepare(task, checkpoint, text, list(values), settings, progress)
        for partial in job.stream():
            yield partial, "", "Generating ...", "", "", None
        out = job.run()
        yield (out.text, details_markdown(out), out.stats(), seen_markdown(out),
               " ".join(out.input_tokens), out)

    event = run.click(generate, [task, checkpoint, text, *controls.components()],
                      [output, details, stats, seen, tokens, result],
                      api_name="generate", concurrency_id="model")
    stop.click(None, cancels=[event], api_visibility="private")
    return GenerateTab(task, checkpoint, text, result, event)

