"""Load test of the workbench app: N concurrent gradio_client users x R /generate requests each.

The app is built with `ui.build_app()` and launched in this process on 127.0.0.1 (a free port),
so the peak RSS reported is this process's (server + clients; the clients are light threads).
Every request must complete or be refused with Gradio's busy message (queue full); anything
else is counted as an error by kind. Latencies are wall-clock per request, as a user sees them.

    python benchmarks/load_app.py --users 16 --requests 5          # the documented full size
    python benchmarks/load_app.py --users 8 --requests 2 --queue-size 4

Writes benchmarks/results/load_app.json and .md (or --out PATH.json / PATH.md). Not a test:
tests/test_load.py runs `run_load` at a reduced size and asserts behaviour, never time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUNDLED = "wikisplit-fusion-small"
TEXTS = ["The bridge opened in 1932 . <::::> It carries six lanes .",
         "Anna wrote the letter . <::::> She posted it on Monday .",
         "The river floods every spring . <::::> Farmers plant rice on its banks .",
         "東京 is large . <::::> It has many trains 😀 ."]
BUSY_WORDS = ("queue is full", "queue full", "too many")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_kind(err: BaseException) -> str:
    """'busy' for Gradio's queue-full refusal, else the exception type and the start of its message."""
    text = str(err)
    if any(w in text.lower() for w in BUSY_WORDS):
        return "busy"
    return f"{type(err).__name__}: {text.splitlines()[0][:80] if text else ''}"


@dataclass
class LoadResult:
    users: int
    requests: int
    checkpoint: str
    max_new_tokens: int
    concurrency: int
    queue_size: int
    wall_s: float = 0.0
    latencies_s: list = field(default_factory=list)  # successful requests only
    outcomes: dict = field(default_factory=dict)  # "ok" / "busy" / error kind -> count
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    peak_rss_mb: float = 0.0
    served_after: bool = False

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> dict:
        return {k: v for k, v in self.outcomes.items() if k not in ("ok", "busy")}

    def percentile(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_s")
        d.update(total=self.total, p50_s=self.percentile(0.5), p95_s=self.percentile(0.95),
                 max_s=max(self.latencies_s, default=None),
                 mean_s=statistics.fmean(self.latencies_s) if self.latencies_s else None)
        return d

    def markdown(self) -> str:
        s = self.summary()
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        rows = [("users x requests", f"{self.users} x {self.requests} = {self.users * self.requests}"),
                ("checkpoint, max new tokens", f"{self.checkpoint}, {self.max_new_tokens} (greedy)"),
                ("concurrency / queue size", f"{self.concurrency} / {self.queue_size}"),
                ("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))),
                ("latency p50 / p95 / max (s)", f"{fmt(s['p50_s'])} / {fmt(s['p95_s'])} / {fmt(s['max_s'])}"),
                ("wall (s)", fmt(self.wall_s)),
                ("RSS before / after / peak (MB)", f"{self.rss_before_mb:.0f} / {self.rss_after_mb:.0f} / "
                                                   f"{self.peak_rss_mb:.0f}"),
                ("served a request afterwards", str(self.served_after))]
        return "| what | value |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def default_settings(models_dir: Path | None = None, **changes):
    """Settings for a load run: the bundled fusion model if present, else a tiny random one made in
    `models_dir` (offered as local:tiny)."""
    from bertgen import tasks
    import ui

    info = tasks.checkpoint_info(BUNDLED)
    kw = dict(max_new_tokens=32)
    if models_dir is not None:
        kw.update(models_dir=models_dir, runs_dir=models_dir.parent / "runs")
    kw.update(changes)
    return ui.Settings(**kw), (BUNDLED if info is not None and info.available_offline() else None)


def make_tiny(models_dir: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_spm_checkpoint  # noqa: PLC0415
    if not (models_dir / "tiny" / "config.json").is_file():
        make_tiny_spm_checkpoint(models_dir / "tiny")
    return "local:tiny"


def generate_values(max_new_tokens: int) -> list:
    # strategy, beams, length penalty, no-repeat, min new, max new, temperature, top-k, top-p, seed, outputs,
    # required token
    return ["greedy", 1, 1.0, 0, 0, max_new_tokens, 1.0, 0, 1.0, 0, 1, False]


def launch(settings, temp_dir: Path | None = None):
    """The app on 127.0.0.1 in this process; returns the Blocks (call .close())."""
    import ui
    if temp_dir is not None:
        os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)
    demo = ui.build_app(settings)
    kwargs = {k: v for k, v in ui.launch_kwargs(settings).items() if k in ("ssr_mode", "max_file_size")}
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, **kwargs)
    return demo


def run_load(url: str, checkpoint: str, users: int, requests: int, max_new_tokens: int = 8,
             concurrency: int = 1, queue_size: int = 32, deadline_s: float = 600.0,
             checkpoints: list[str] | None = None, on_request=None) -> LoadResult:
    """`users` threads, each its own gradio_client.Client, each sending `requests` /generate calls.
    `checkpoints`: cycle through these per request (switching models under load)."""
    from gradio_client import Client

    result = LoadResult(users, requests, checkpoint, max_new_tokens, concurrency, queue_size)
    outcomes: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s
    result.rss_before_mb = rss_mb()
    barrier = threading.Barrier(users)

    def user(k: int):
        try:
            client = Client(url, verbose=False)
        except Exception as err:  # noqa: BLE001
            with lock:
                outcomes[f"connect {error_kind(err)}"] += requests
            return
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        for r in range(requests):
            if time.monotonic() > stop_at:
                with lock:
                    outcomes["not sent (deadline)"] += 1
                continue
            ckpt = checkpoints[(k + r) % len(checkpoints)] if checkpoints else checkpoint
            start = time.perf_counter()
            try:
                out = client.predict("sentence-fusion", ckpt, TEXTS[(k + r) % len(TEXTS)],
                                     *generate_values(max_new_tokens), api_name="/generate")
                kind = "ok" if isinstance(out, (list, tuple)) and out[2] and "tokens/s" in out[2] else "bad output"
            except Exception as err:  # noqa: BLE001 - counted by kind
                kind = error_kind(err)
            elapsed = time.perf_counter() - start
            with lock:
                outcomes[kind] += 1
                if kind == "ok":
                    result.latencies_s.append(elapsed)
            if on_request is not None:
                on_request()
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass

    threads = [threading.Thread(target=user, args=(k,), name=f"load-user-{k}", daemon=True) for k in range(users)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.monotonic() + 30))
    result.wall_s = time.perf_counter() - start
    result.outcomes = dict(outcomes)
    hung = sum(t.is_alive() for t in threads)
    if hung:
        result.outcomes["user thread still running"] = hung
    # The server keeps answering: one more request on a fresh client.
    try:
        out = Client(url, verbose=False).predict("sentence-fusion", checkpoint, TEXTS[0],
                                                 *generate_values(max_new_tokens), api_name="/generate")
        result.served_after = bool(out[2])
    except Exception:  # noqa: BLE001
        result.served_after = False
    result.rss_after_mb = rss_mb()
    result.peak_rss_mb = peak_rss_mb()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--requests", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=1, help="BERTGEN_CONCURRENCY of the app")
    p.add_argument("--queue-size", type=int, default=32, help="BERTGEN_QUEUE_SIZE of the app")
    p.add_argument("--deadline", type=float, default=900.0, help="stop sending after this many seconds")
    p.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint, not the bundled one")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_app.json")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="load-app-"))
    settings, bundled = default_settings(work / "models", concurrency=args.concurrency, queue_size=args.queue_size)
    checkpoint = make_tiny(work / "models") if (args.tiny or bundled is None) else bundled
    demo = launch(settings, work / "gradio")
    try:
        result = run_load(demo.local_url, checkpoint, args.users, args.requests, args.max_new_tokens,
                          args.concurrency, args.queue_size, args.deadline)
    finally:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)
    import torch
    import gradio
    summary = result.summary()
    summary.update(when=time.strftime("%Y-%m-%d %H:%M:%S"), gradio=gradio.__version__, torch=torch.__version__,
                   cpus=os.cpu_count(), command="python benchmarks/load_app.py " + " ".join(argv or sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    md = (f"# Load test of the app ({summary['when']})\n\n`{summary['command']}` - gradio {gradio.__version__}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, app in-process (peak RSS = server + client threads).\n\n"
          + result.markdown())
    args.out.with_suffix(".md").write_text(md)
    print(md)
    ok = not result.errors and result.served_after and result.total == args.users * args.requests
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
