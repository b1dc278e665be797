"""Sample media for the demo: a few sentences spoken by espeak-ng, plus one bad file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SENTENCES = {
    "sample_weather.wav": "The weather in the mountains will be cold and windy this weekend.",
    "sample_support_call.wav": "Hello, my name is John Smith. Please call me back at 212 555 0199 about my order.",
    "sample_meeting.wav": "Please send the quarterly report to the finance team before Friday afternoon.",
}


def synthesize(folder: Path) -> list[Path]:
    """Write the sample WAVs (and a text file named .mp3, which must be quarantined)."""
    if not shutil.which("espeak-ng"):
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in SENTENCES.items():
        path = folder / name
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
        out.append(path)
    bad = folder / "not_really_audio.mp3"
    bad.write_text("This is a text file with an .mp3 name; the pipeline must quarantine it.\n")
    out.append(bad)
    return out
