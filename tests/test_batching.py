"""Cross-file batching: concurrent callers share one model round; one bad file fails only itself."""

import threading

import numpy as np
import pytest

from scribeline import local, media, model_thread, stages, transcription
from scribeline.batching import BatchingQueue
from tests.conftest import EXACT_ENGLISH


@pytest.fixture(scope="module")
def prepared(media_dir, settings, tmp_path_factory):
    return local.transcribe_files(settings, [media_dir / f for f in EXACT_ENGLISH[:3]], tmp_path_factory.mktemp("batch"))


def _job(settings, r):
    return stages.audio_job(settings, media.open_audio(r.audio.path), r.audio.gain_db, r.windows, r.info.sample_rate)


def _call_concurrently(queue, job_lists):
    results: list = [None] * len(job_lists)

    def call(i):
        try:
            results[i] = queue.transcribe(job_lists[i])
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(job_lists))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_concurrent_callers_are_decoded_in_one_round_on_the_model_thread(settings, prepared):
    tr = stages.transcriber(settings)
    queue = BatchingQueue(tr)
    seen_threads = set()
    original = tr._transcribe

    def recording(jobs, progress):
        seen_threads.add(threading.current_thread().name)
        return original(jobs, progress)

    tr._transcribe = recording  # observe which thread decodes; the decoding itself is the real one
    try:
        results = _call_concurrently(queue, [[_job(settings, r)] for r in prepared])
    finally:
        del tr._transcribe
    assert queue.rounds == [len(prepared)]
    assert seen_threads and all(n.startswith(model_thread.MODEL_THREAD_NAME) for n in seen_threads)
    for r, out in zip(prepared, results):
        assert not isinstance(out, Exception), out
        assert out[0].text == r.transcript.text  # each caller gets its own file's transcript
        assert out[0].segments[0].start >= 0


def test_a_failing_file_fails_only_its_own_caller(settings, prepared):
    tr = stages.transcriber(settings)
    queue = BatchingQueue(tr)
    good = _job(settings, prepared[0])

    def unreadable(start, end):  # a file whose samples cannot be read (e.g. truncated upload)
        raise OSError("normalized audio is truncated")

    bad = transcription.AudioJob(read=unreadable, windows=prepared[1].windows)
    results = _call_concurrently(queue, [[good], [bad]])
    assert isinstance(results[1], OSError)
    assert not isinstance(results[0], Exception)
    assert results[0][0].text.strip()
    # The queue keeps serving after a failure.
    again = queue.transcribe([good])
    assert again[0].text == results[0][0].text


def test_model_work_runs_on_one_thread_whichever_thread_asks(settings, media_dir):
    names = set()
    for _ in range(3):
        t = threading.Thread(target=lambda: names.add(model_thread.on_model_thread(lambda: threading.current_thread().name)))
        t.start()
        t.join()
    names.add(model_thread.on_model_thread(lambda: threading.current_thread().name))
    assert len(names) == 1 and next(iter(names)).startswith(model_thread.MODEL_THREAD_NAME)
    # A call made on the model thread runs inline instead of waiting on itself.
    assert model_thread.on_model_thread(lambda: model_thread.on_model_thread(lambda: 42)) == 42
    assert model_thread.on_model_thread(np.add, 2, 3) == 5


_VAD_THREADS_SCRIPT = """
import os, sys, threading, time
from pathlib import Path
import torch
from scribeline import media, segmentation

src, scratch = Path(sys.argv[1]), Path(sys.argv[2])
norm = media.normalize(src, scratch, media.probe(src))
torch.ones(64, 64) @ torch.ones(64, 64)  # the main thread's own OpenMP team exists before counting,
segmentation.segment(media.open_audio(norm.path)[:16000], 0.0)  # and ONNX Runtime's one thread
before = len(os.listdir("/proc/self/task"))
out = []
t = threading.Thread(target=lambda: out.append(segmentation.segment(media.open_audio(norm.path), norm.gain_db)))
t.start()
t.join()
# A joined thread can stay listed for a moment while the OS finishes its exit; a torch
# (OpenMP) team never leaves.
deadline = time.monotonic() + 2.0
while len(os.listdir("/proc/self/task")) > before and time.monotonic() < deadline:
    time.sleep(0.01)
print(before, len(os.listdir("/proc/self/task")), len(out[0]))
"""


def test_vad_in_a_task_thread_starts_no_torch_threads(media_dir, tmp_path):
    # The model thread exists because every thread that runs torch ops gets its own OpenMP
    # team, which slows the model. VAD runs in task threads, so it must not touch torch:
    # a long recording (scored in parallel parts) leaves the process with no new threads.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _VAD_THREADS_SCRIPT, str(media_dir / "fr_smartphone_chronicle.mp3"),
                           str(tmp_path / "audio.f32")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, windows = proc.stdout.split()
    assert int(windows) >= 6  # 178 s of speech: it really ran, in parallel parts
    assert after == before


def test_a_round_starts_once_the_announced_callers_are_all_waiting():
    # The flow tells the transcriber how many media its wave holds: the round starts when
    # they are all in, without sitting out the quiet period (here far longer than the test).
    from scribeline.batching import Coalescer

    coalescer = Coalescer(lambda items: [i * 10 for i in items], quiet_s=60.0, max_wait_s=120.0)
    results: dict[int, int] = {}

    def call(i):
        results[i] = coalescer(i, expected=3)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "the round waited for the quiet period"
    assert coalescer.rounds == [3] and results == {0: 0, 1: 10, 2: 20}
