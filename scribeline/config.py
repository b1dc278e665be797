"""One configuration object, read from ``SCRIBELINE_*`` environment variables.

An optional TOML file (``SCRIBELINE_CONFIG``, or ``scribeline.toml`` in the data
directory) supplies defaults; the environment always wins. Credentials never
have defaults in code: for the embedded S3 server they are generated on first
use and kept in ``<data_dir>/s3-credentials.json`` (mode 0600).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from scribeline.governance import DEFAULT_CLASS_ENTITIES, DEFAULT_CLASS_RETENTION_DAYS, DEFAULT_RETENTION_DAYS

PIPELINE_VERSION = "2"  # 2: no packing, row-invariant int8 decoding, guards
ENV_PREFIX = "SCRIBELINE_"

# Validation checks whose failure marks a media ``needs_review`` (``validation.check_name``:
# ``table.column:expectation_type``, a pair's columns joined by ``+``).
DEFAULT_CRITICAL_EXPECTATIONS: tuple[str, ...] = (
    "segments.text:expect_column_values_to_not_be_null",
    "segments.text:expect_column_value_lengths_to_be_between",
    "segments.start_s:expect_column_values_to_be_between",
    "segments.start_s:expect_column_pair_values_a_to_be_greater_than_b",  # inside the media; in order
    "segments.end_s:expect_column_values_to_be_between",
    "segments.end_s:expect_column_pair_values_a_to_be_greater_than_b",
    "segments.end_s+start_s:expect_column_pair_values_a_to_be_greater_than_b",
    "segments.repeated_phrase:expect_column_values_to_be_in_set",
    "segments.word_rate:expect_column_values_to_be_between",
    "segments.guard_flags:expect_column_values_to_be_null",
    "words.start_s:expect_column_values_to_be_between",
    "words.start_s:expect_column_pair_values_a_to_be_greater_than_b",
    "words.end_s+start_s:expect_column_pair_values_a_to_be_greater_than_b",
    "redacted.residual_pii:expect_column_values_to_be_null",  # a structured value survived redaction
)


def _default_data_dir() -> Path:
    return Path.home() / ".scribeline"


def _default_model() -> str:
    # Prefer the checkpoint that ships beside the project (offline machines);
    # elsewhere whisper downloads "tiny.en" by name.
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared" / "models" / "tiny.en.pt",):
        if candidate.exists():
            return str(candidate)
    return "tiny.en"


def _as_bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Settings:
    """Every knob of the pipeline. Field ``foo`` is read from ``SCRIBELINE_FOO``."""

    data_dir: Path = field(default_factory=_default_data_dir)
    # Object store. Empty endpoint means "the embedded SeaweedFS server".
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    s3_region: str = ""
    bucket_incoming: str = "scribeline-incoming"
    bucket_normalized: str = "scribeline-normalized"
    bucket_processed: str = "scribeline-processed"
    bucket_quarantine: str = "scribeline-quarantine"
    bucket_redacted_audio: str = "scribeline-redacted-audio"
    bucket_restricted: str = "scribeline-restricted"  # unredacted transcripts, only if keep_unredacted
    # Embedded services (only used when s3_endpoint is empty / no Prefect API is configured).
    embedded_s3_port: int = 8333
    prefect_port: int = 4200
    # Warehouse (DuckLake). Locally: a SQLite catalog file (empty: <data_dir>/warehouse/lake.sqlite) with
    # the Parquet files beside it. At scale: a PostgreSQL catalog ("postgres:dbname=... host=...", the
    # password from PGPASSWORD or the conninfo) and a data path, e.g. s3://scribeline-lake/.
    warehouse_path: str = ""
    warehouse_catalog: str = ""
    warehouse_data: str = ""
    # Transcription.
    model: str = field(default_factory=_default_model)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    language: str = ""  # empty: detect from speech
    task: str = "transcribe"  # transcribe | translate
    batch_size: int = 0  # 0: chosen from the device
    beam_size: int = 1  # 1: greedy decoding (openai-whisper's default); 5 for beam search
    # Beam search for sources sampled at ≤ 8 kHz; 1: greedy, as everything else. Beam 5 was the default
    # until measured on the realistic corpus (benchmark/): the stage's time 31.7 s -> 15.6 s, English WER
    # 54.8 % -> 55.8 % (noise, mostly hopeless 0-dB clips); it had been chosen on one clip (JFK at 8 kHz).
    narrowband_beam_size: int = 1
    cpu_int8: bool = True  # int8 dynamic quantization of the model on CPU
    word_timestamps: bool = True
    max_tokens_per_s: float = 16.0  # a window decodes at most this many tokens per second of audio (+ 8)
    decode_budget_factor: float = 2.0  # a track may hold the model this many times its duration (at least
    decode_budget_min_s: float = 60.0  # this long); past it the media is quarantined, fallbacks stop at half
    split_channels: bool = False  # transcribe each channel of a stereo call separately
    # Segmentation.
    vad_threshold: float = 0.5
    max_window_s: float = 30.0
    # Redaction.
    pii_entities: tuple[str, ...] = (
        "PERSON",
        "PHONE_NUMBER",
        "EMAIL_ADDRESS",
        "CREDIT_CARD",
        "US_SSN",
        "LOCATION",
        "IBAN_CODE",
        "IP_ADDRESS",
    )
    pii_score_threshold: float = 0.4
    # How a detected value is written: replace (<PERSON>), mask (****, per word) or hash
    # (<PERSON:3f9a1c2e>, a salted hash of the normalised value, so repeats can be counted).
    # ``pii_operators`` overrides it per entity type: "PHONE_NUMBER=hash,PERSON=mask".
    pii_operator: str = "replace"
    pii_operators: str = ""
    # The hash operator's salt; empty: generated once into <data_dir>/pii-hash-salt (mode 0600).
    # Machines that share a warehouse must share the salt (set it from a secret store).
    pii_hash_salt: str = ""
    # A copy of the audio with every PII span beeped or muted, in bucket_redacted_audio: beep | mute | off.
    audio_redaction: str = "off"
    audio_redaction_padding_s: float = 0.25
    # Keep the unredacted transcript (JSON) in the restricted bucket until its retention age.
    keep_unredacted: bool = False
    # Governance (scribeline/governance.py): data classes by source, regions, retention ages.
    data_class_sources: str = ""
    default_data_class: str = "internal"
    data_class_entities: str = DEFAULT_CLASS_ENTITIES
    retention_days: str = DEFAULT_RETENTION_DAYS
    data_class_retention_days: str = DEFAULT_CLASS_RETENTION_DAYS
    region: str = ""
    source_regions: str = ""
    retention_cron: str = "17 3 * * *"
    # Validation: the checks whose failure marks a media needs_review (names or expectation types/classes).
    critical_expectations: tuple[str, ...] = DEFAULT_CRITICAL_EXPECTATIONS
    # Orchestration.
    max_attempts: int = 3  # flow runs an object may take (a worker lost mid-run) before it is quarantined
    # Set by `scribeline worker` for the flow runs it hosts in its own process (scribeline.warm_worker):
    # they share its loaded model, so a batched stage waits for no wave size of its own.
    warm_worker: bool = False
    max_runs_in_flight: int = 32  # per-media flow runs a sweep lets wait or run at once (backpressure)
    # Per-media runs that execute at once: the GPU pool's concurrency limit (`scribeline deploy`).
    # A deployment concurrency limit would do it too, but each waiting run is then offered to the
    # workers every poll and refused by a state change: a write to the Prefect server's database.
    # 4: on the SQLite-backed server of `scribeline up`, 16 runs at once made its writers wait on
    # each other for its 60-s busy timeout; with PostgreSQL (docker/compose.yaml) raise it.
    media_runs_at_once: int = 4
    max_objects_per_run: int = 1  # objects one per-media flow run takes
    sweep_deployment: str = "scribeline-process-media/process-media"
    # A run RUNNING longer than the lease is taken for lost by the sweep (its machine died with
    # it) and the object gets its next attempt; 0: the sum of the stages' timeouts for the
    # object's size. (A worker killed on a living machine is restarted by its supervisor, which
    # marks that worker's runs Crashed at once: scribeline.warm_worker.crash_runs_of.)
    run_lease_s: float = 0.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        values: dict[str, str] = {}
        config_file = env.get(ENV_PREFIX + "CONFIG")
        data_dir = Path(env.get(ENV_PREFIX + "DATA_DIR", str(_default_data_dir()))).expanduser()
        candidate = Path(config_file) if config_file else data_dir / "scribeline.toml"
        if candidate.exists():
            with open(candidate, "rb") as fh:
                values.update({k.lower(): v for k, v in tomllib.load(fh).items()})
        for f in dataclasses.fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env:
                values[f.name] = env[key]
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            raw = values[f.name]
            kwargs[f.name] = _coerce(f, raw)
        settings = cls(**kwargs)
        settings.data_dir = Path(settings.data_dir).expanduser().resolve()
        return settings

    # Derived paths -----------------------------------------------------
    @property
    def warehouse(self):
        """The warehouse's :class:`scribeline.warehouse.Lake`."""
        from scribeline.warehouse import Lake

        if not self.warehouse_catalog:
            lake = Lake.of(Path(self.warehouse_path).expanduser() if self.warehouse_path
                           else self.data_dir / "warehouse" / "lake.sqlite")
            return Lake(lake.catalog, self.warehouse_data or lake.data_path)
        if not self.warehouse_data:
            raise ValueError("SCRIBELINE_WAREHOUSE_CATALOG needs SCRIBELINE_WAREHOUSE_DATA (a folder or s3://bucket/prefix/)")
        s3 = None
        if self.warehouse_data.startswith("s3://"):
            access, secret = self.credentials()
            s3 = (self.endpoint, access, secret, self.s3_secure, self.s3_region)
        return Lake(self.warehouse_catalog, self.warehouse_data, s3)

    @property
    def embedded(self) -> bool:
        return not self.s3_endpoint

    @property
    def endpoint(self) -> str:
        return self.s3_endpoint or f"127.0.0.1:{self.embedded_s3_port}"

    def credentials(self) -> tuple[str, str]:
        """S3 keys: from the environment, or the embedded server's generated pair."""
        if self.s3_access_key and self.s3_secret_key:
            return self.s3_access_key, self.s3_secret_key
        if not self.embedded:
            raise ValueError(
                "SCRIBELINE_S3_ACCESS_KEY and SCRIBELINE_S3_SECRET_KEY must be set "
                f"to use the S3 endpoint {self.s3_endpoint}"
            )
        path = self.data_dir / "s3-credentials.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pair = {"access_key": "scribeline-" + secrets.token_hex(4), "secret_key": secrets.token_urlsafe(24)}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(pair, fh)
        pair = json.loads(path.read_text())
        return pair["access_key"], pair["secret_key"]

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.bucket_incoming, self.bucket_normalized, self.bucket_processed, self.bucket_quarantine,
                self.bucket_redacted_audio, self.bucket_restricted)

    @property
    def governance(self):
        """Data classes, regions and retention ages (:class:`scribeline.governance.Governance`)."""
        from scribeline.governance import Governance

        return Governance.of(self)

    def hash_salt(self) -> str:
        """The PII hash operator's salt: configured, or generated once per data directory."""
        if self.pii_hash_salt:
            return self.pii_hash_salt
        path = self.data_dir / "pii-hash-salt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
            except FileExistsError:  # another process made it first
                pass
        return path.read_text().strip()

    def operators(self) -> dict[str, str]:
        """The redaction operator per entity type ('*': the default)."""
        from scribeline.governance import _pairs

        ops = {"*": self.pii_operator, **dict(_pairs(self.pii_operators, "SCRIBELINE_PII_OPERATORS"))}
        bad = {v for v in ops.values() if v not in ("replace", "mask", "hash")}
        if bad:
            raise ValueError(f"unknown PII operator {sorted(bad)}: use replace, mask or hash")
        return ops

    def fingerprint(self, data_class: str | None = None) -> str:
        """Hash of everything that changes a transcript: part of each media's run key."""
        model_id = self.model
        path = Path(self.model).expanduser()
        if path.exists():
            st = path.stat()
            model_id = f"{path.name}:{st.st_size}"
        relevant = {
            "pipeline": PIPELINE_VERSION,
            "model": model_id,
            "language": self.language,
            "task": self.task,
            "beam_size": self.beam_size,
            "narrowband_beam_size": self.narrowband_beam_size,
            "cpu_int8": self.cpu_int8,
            "word_timestamps": self.word_timestamps,
            "max_tokens_per_s": self.max_tokens_per_s,
            "split_channels": self.split_channels,
            "vad_threshold": self.vad_threshold,
            "max_window_s": self.max_window_s,
            "pii_entities": sorted(self.pii_entities),
            "pii_score_threshold": self.pii_score_threshold,
            "critical_expectations": sorted(self.critical_expectations),
        }
        ops = self.operators()
        if ops != {"*": "replace"}:  # (keys made before operators existed stay valid)
            relevant["pii_operators"] = ops
            if "hash" in ops.values():  # another salt, other tags; the salt itself stays secret
                relevant["pii_salt"] = hashlib.sha256(self.hash_salt().encode()).hexdigest()[:16]
        if data_class and data_class != self.default_data_class:
            # The same bytes from a source of another class are another media: other entities redacted.
            relevant["data_class"] = data_class
            relevant["class_entities"] = sorted(self.governance.entities(data_class, ()))
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def beam_for(self, source_sample_rate: int | None) -> int | None:
        """Beam size for a source: narrowband telephony audio may get its own (``narrowband_beam_size``)."""
        narrow = bool(source_sample_rate) and source_sample_rate <= 8000
        beam = self.narrowband_beam_size if narrow else self.beam_size
        return beam if beam and beam > 1 else None

    def run_key(self, sha256: str, data_class: str | None = None) -> str:
        """The flow-run key: same content + same configuration (+ data class) = same key = no new work."""
        return f"{sha256[:32]}-{self.fingerprint(data_class)}"


def _coerce(f: dataclasses.Field, raw):
    if not isinstance(raw, str):
        return tuple(raw) if f.type.startswith("tuple") else raw
    t = f.type
    if t == "bool":
        return _as_bool(raw)
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    if t.startswith("tuple"):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if t == "Path":
        return Path(raw)
    return raw
