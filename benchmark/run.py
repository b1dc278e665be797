"""Speed and accuracy benchmark: openai-whisper's transcribe() against scribeline, on the same audio and model.

    .venv/bin/python -m benchmark.run [--minutes 10] [--model PATH|NAME] [--device cpu|cuda] [--repeat 3]
                                      [--export-decoded DIR | --decoded DIR]

One command runs three phases, each in its own process so that each reports its
own peak memory, on the same files and weights:

  baseline   whisper.load_model(...).transcribe(path) with its defaults, file after file
  stage      scribeline's transcription stage: probe, normalize, VAD, batched decode, word times
  pipeline   the whole Prefect flow: S3 ingest -> ... -> DuckDB, on a real S3 server and Prefect API

Where no ffmpeg is at hand (the GPU machine this was measured on), ``--export-decoded
DIR`` normalizes the files here with the stage's own ``media.normalize`` and
``--decoded DIR`` runs the baseline and the stage from those 16 kHz files there:
whisper's transcribe() then gets the samples its own ffmpeg call would give, and
the stage starts at segmentation. Neither side pays for decoding the media.

Model loading (and, for the pipeline, loading Presidio's and Great Expectations'
engines, and starting the servers) happens before the clock starts: it is a cost
per worker process, not per file. Prints a table and writes it as JSON. With
``--repeat N`` the phases run N times and the table gives medians: on a shared
machine one phase's wall time moves by ±15 % between runs, so speed-ups are taken
as ratios within each repetition, and each repetition starts one phase later than
the one before (with 3 phases, a multiple of 3 repetitions puts every phase after
every other equally often).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark.audio import MEDIA, items  # noqa: E402

PHASES = ("baseline", "stage", "pipeline")


def _peak_mib() -> float:
    """Peak resident memory of this process plus that of each live child (the PII analyzer's process:
    the pipeline phase redacts through it)."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for child in multiprocessing.active_children():
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        peak_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return peak_kib / 1024


def _default_model() -> str:
    local = ROOT.parent / "shared" / "models" / "tiny.en.pt"
    return str(local) if local.exists() else "tiny.en"


# ------------------------------------------------------------------ phases
def _decoded_tracks(items: list[dict]):
    from scribeline import local, media

    return [local.NormalizedTrack(media.NormalizedAudio(Path(i["path"]), i["num_samples"], i["gain_db"], 0.0, 0.0),
                                  i["sample_rate"]) for i in items]


def phase_baseline(items: list[dict], model_spec: str, device: str) -> dict:
    import torch
    import whisper

    model = whisper.load_model(model_spec, device=device)
    fp16 = device.startswith("cuda")
    if "num_samples" in items[0]:  # decoded: the samples whisper's own ffmpeg call gives (no gain)
        from scribeline import media

        inputs = [media.read_samples(media.open_audio(t.audio.path), 0, t.audio.num_samples, 0.0)
                  for t in _decoded_tracks(items)]
        warm_up = inputs[0]
    else:
        inputs, warm_up = [i["path"] for i in items], str(MEDIA / "en_jfk.flac")
    model.transcribe(warm_up, fp16=fp16)  # not timed
    texts = []
    start = time.perf_counter()
    for audio in inputs:
        texts.append(model.transcribe(audio, fp16=fp16)["text"])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - start, "texts": texts}


def phase_stage(items: list[dict], model_spec: str, device: str) -> dict:
    from scribeline import local, stages
    from scribeline.config import Settings

    settings = Settings.from_env()
    if "num_samples" in items[0]:
        tracks = _decoded_tracks(items)
        local.transcribe_normalized(settings, tracks[:1])  # warm-up, not timed

        def run():
            return [t for _, t in local.transcribe_normalized(settings, tracks)]
    else:
        local.transcribe_files(settings, [MEDIA / "en_jfk.flac"])  # warm-up, not timed

        def run():
            return [r.transcript for r in local.transcribe_files(settings, [Path(i["path"]) for i in items])]
    tr = stages.transcriber(settings)
    tr.timings.clear()
    start = time.perf_counter()
    transcripts = run()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - start, "texts": [t.text for t in transcripts], "transcriber_s": tr.timings}


def phase_pipeline(items: list[dict], model_spec: str, device: str) -> dict:
    # Prefect's ephemeral API, as `scribeline run` uses with nothing started.
    from scribeline import samples, services, stages, storage, warehouse
    from scribeline.batching import queue_for
    from scribeline.config import Settings

    settings = Settings.from_env()
    data = settings.data_dir
    svc = services.start_s3(settings)
    try:
        from flows.process_incoming import process_incoming

        paths = [Path(i["path"]) for i in items]
        keys = [f"bench/{i:02d}-{p.name}" for i, p in enumerate(paths)]
        # Warm-up, not timed: one synthesized clip (content no benchmark file shares) through
        # the whole flow starts the ephemeral API, loads the model and the Presidio and Great
        # Expectations engines, creates the warehouse, and lets the S3 server allocate storage
        # for each bucket (SeaweedFS does that on a bucket's first write).
        warm = samples.synthesize(data / "warm-up")[0]
        storage.upload_file(settings, warm, key=f"warm-up/{warm.name}")
        with services.ephemeral_flow_runs():  # as `scribeline run` does
            process_incoming()
        tr = stages.transcriber(settings)
        tr.timings.clear()  # the timed run's figures only, not the warm-up's
        queue_for(tr).rounds.clear()
        for i, p in enumerate(paths):
            storage.upload_file(settings, p, key=keys[i])
        start = time.perf_counter()
        with services.ephemeral_flow_runs():
            outcomes = process_incoming()
        wall = time.perf_counter() - start
    finally:
        services.stop(svc)
    df = warehouse.query(settings.warehouse, "select m.source_key, t.text from transcripts t join media m using (media_id)")
    by_key = dict(zip(df["source_key"], df["text"]))
    states = [o["state"] for o in outcomes]
    return {"wall_s": wall, "texts": [by_key.get(k, "") for k in keys], "states": states,
            "transcriber_s": tr.timings, "batch_rounds": queue_for(tr).rounds}


def run_phase(args) -> None:
    spec = json.loads(Path(args.items).read_text())
    fn = {"baseline": phase_baseline, "stage": phase_stage, "pipeline": phase_pipeline}[args.phase]
    out = fn(spec["items"], spec["model"], spec["device"])
    out["peak_mib"] = _peak_mib()
    Path(args.result).write_text(json.dumps(out))


# ----------------------------------------------------------------- report
def corpus_wer(refs: list[str], hyps: list[str], languages: list[str]) -> float | None:
    import jiwer
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    en, basic = EnglishTextNormalizer(), BasicTextNormalizer()
    pairs = [((en if lang == "en" else basic)(r), (en if lang == "en" else basic)(h))
             for r, h, lang in zip(refs, hyps, languages) if r is not None]
    if not pairs:
        return None
    return jiwer.wer([p[0] for p in pairs], [p[1] for p in pairs])


def audio_seconds(paths: list[Path]) -> float:
    import ffmpeg

    return sum(float(ffmpeg.probe(str(p))["format"]["duration"]) for p in paths)


def export_decoded(bench_items: list[dict], out: Path) -> None:
    """Each file as the stage normalizes it (16 kHz 16-bit mono, measured gain) plus what --decoded needs."""
    from scribeline import media

    out.mkdir(parents=True, exist_ok=True)
    exported = []
    for n, item in enumerate(bench_items):
        info = media.probe(Path(item["path"]))
        name = f"{n:02d}-{Path(item['path']).stem}.s16"
        norm = media.normalize(Path(item["path"]), out / name, info)
        exported.append({**item, "path": name, "num_samples": norm.num_samples, "gain_db": norm.gain_db,
                         "sample_rate": info.sample_rate})
    (out / "items.json").write_text(json.dumps(exported, indent=1))
    print(f"{len(exported)} files, {sum(i['num_samples'] for i in exported) / 16000:.0f} s of audio, normalized into {out}")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def _rounded(x):
    return {k: round(v, 3) for k, v in x.items()} if isinstance(x, dict) else round(x, 3)


def _run_phase_process(phase: str, args, spec_path: Path) -> dict | None:
    """One phase in a fresh process with its own data directory; prints its waves and timings."""
    data = Path(tempfile.mkdtemp(prefix=f"bench-{phase}-"))
    env = dict(os.environ, SCRIBELINE_DATA_DIR=str(data), SCRIBELINE_MODEL=args.model, SCRIBELINE_DEVICE=args.device,
               SCRIBELINE_EMBEDDED_S3_PORT=os.environ.get("SCRIBELINE_EMBEDDED_S3_PORT", "18433"),
               DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(data / "prefect"),
               TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="", GX_ANALYTICS_ENABLED="false", TQDM_DISABLE="1")
    env.pop("PREFECT_API_URL", None)
    if phase != "baseline":  # scribeline's phases run as its worker does; the baseline with glibc's defaults
        from scribeline import allocator

        env = allocator.with_tunables(env) if allocator.wanted(env) else env
    result_path = data / "result.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmark.run", "--phase", phase, "--items", str(spec_path),
                           "--result", str(result_path)], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{phase} failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
        return None
    result = json.loads(result_path.read_text())
    lines = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if " media in " in line]
    timed_run = lines[-1].split("Flow run ", 1)[-1].split(" - ", 1)[0] if lines else ""
    waves = [line.split(" - ", 1)[-1] for line in lines if timed_run in line]  # the timed run's, not the warm-up's
    if waves:
        print("    stage waves: " + "; ".join(waves))
        # "normalize+segment: 8 media in 1.92 s" -> {"normalize+segment": 1.92}
        result["waves_s"] = {w.split(":", 1)[0]: float(w.rsplit(" in ", 1)[1].split()[0]) for w in waves}
    if "transcriber_s" in result:
        print("    transcriber: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["transcriber_s"].items())
              + (f"; media per batching round {result['batch_rounds']}" if "batch_rounds" in result else ""))
    print(f"  {phase}: {result['wall_s']:.1f} s (process total {time.perf_counter() - t0:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="scribeline speed/accuracy benchmark")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the long-form file")
    p.add_argument("--model", default=_default_model())
    p.add_argument("--device", default="cpu")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--repeat", type=int, default=1, help="run the phases this many times, alternating; report medians")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "scribeline-benchmark"))
    p.add_argument("--output", default=str(ROOT / "benchmark" / "results.json"))
    p.add_argument("--export-decoded", metavar="DIR", help="normalize the benchmark's files into DIR and stop")
    p.add_argument("--decoded", metavar="DIR", help="run from files --export-decoded wrote (no ffmpeg needed)")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--items", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        run_phase(args)
        return 0


    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.decoded:
        bench_items = [{**i, "path": str(Path(args.decoded) / i["path"])}
                       for i in json.loads((Path(args.decoded) / "items.json").read_text())]
        seconds = sum(i["num_samples"] for i in bench_items) / 16000
        if "pipeline" in args.phases:
            p.error("--decoded runs the baseline and the stage; the pipeline needs ffmpeg and the media files")
    else:
        english_only = Path(args.model).stem.endswith(".en") or args.model.endswith(".en")
        bench_items = [{**asdict(i), "path": str(i.path)} for i in items(workdir, args.minutes, english_only)]
        if args.export_decoded:
            export_decoded(bench_items, Path(args.export_decoded))
            return 0
        seconds = audio_seconds([Path(i["path"]) for i in bench_items])
    spec = {"model": args.model, "device": args.device, "items": bench_items}
    spec_path = workdir / "items.json"
    spec_path.write_text(json.dumps(spec))
    print(f"{len(bench_items)} files, {seconds:.0f} s of audio; model {args.model} on {args.device}")
    print(f"machine: {machine()}\n")

    phases = args.phases.split(",")
    runs: list[dict] = []  # one dict per repetition: phase -> result
    orders: list[list[str]] = []
    for rep in range(args.repeat):
        # Each repetition starts one phase later, so that no phase always runs right after the
        # same other one (the machine's state after a phase is not the state before it).
        order = phases[rep % len(phases):] + phases[: rep % len(phases)]
        orders.append(order)
        if args.repeat > 1:
            print(f"repetition {rep + 1} of {args.repeat}: {', '.join(order)}")
        results = {}
        for phase in order:
            results[phase] = _run_phase_process(phase, args, spec_path)
            if results[phase] is None:
                return 1
        runs.append(results)

    refs = [i["reference"] for i in bench_items]
    langs = [i["language"] for i in bench_items]
    rows = []
    for phase in phases:
        walls = [r[phase]["wall_s"] for r in runs]
        # Speed-up and pipeline/stage are ratios within one repetition (same machine state), then the median.
        speedups = [r["baseline"]["wall_s"] / r[phase]["wall_s"] for r in runs] if "baseline" in phases else []
        rows.append({
            "phase": phase, "audio_s": round(seconds, 1), "wall_s": round(statistics.median(walls), 2),
            "wall_s_range": [round(min(walls), 2), round(max(walls), 2)],
            "realtime_x": round(seconds / statistics.median(walls), 1),
            "speedup": round(statistics.median(speedups), 2) if speedups else None,
            "speedup_range": [round(min(speedups), 2), round(max(speedups), 2)] if speedups else None,
            "wer": round(corpus_wer(refs, runs[-1][phase]["texts"], langs) or 0.0, 4),
            "peak_mib": round(max(r[phase]["peak_mib"] for r in runs)),
        })
    print(f"\n{args.repeat} repetition(s); wall time and speed-up are medians (range in brackets)")
    print("| phase | audio s | wall s | × realtime | speed-up vs baseline | WER | peak memory MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        wall = f"{row['wall_s']}" + (f" [{row['wall_s_range'][0]}–{row['wall_s_range'][1]}]" if args.repeat > 1 else "")
        speed = "-" if row["speedup"] is None else f"{row['speedup']}" + (
            f" [{row['speedup_range'][0]}–{row['speedup_range'][1]}]" if args.repeat > 1 else "")
        print(f"| {row['phase']} | {row['audio_s']} | {wall} | {row['realtime_x']} | {speed} | {row['wer'] * 100:.2f} % | {row['peak_mib']} |")
    overhead = None
    if "stage" in phases and "pipeline" in phases:
        ratios = [r["pipeline"]["wall_s"] / r["stage"]["wall_s"] for r in runs]
        overhead = {"median": round(statistics.median(ratios), 2), "per_repetition": [round(x, 2) for x in ratios]}
        print(f"\npipeline / stage wall time: median {overhead['median']} (per repetition: {overhead['per_repetition']})")
    # Each round's figures, as the README quotes them: wall time, the transcriber's steps, the flow's waves.
    rounds = [{phase: {k: _rounded(r[phase][k]) for k in ("wall_s", "transcriber_s", "waves_s") if k in r[phase]}
               for phase in order} for r, order in zip(runs, orders)]
    Path(args.output).write_text(json.dumps({"machine": machine(), "model": args.model, "device": args.device,
                                             "repetitions": args.repeat, "files": [Path(i["path"]).name for i in bench_items],
                                             "decoded_ahead": bool(args.decoded), "phase_order": orders,
                                             "rows": rows, "pipeline_over_stage": overhead, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
