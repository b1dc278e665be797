import stat

import pytest

from scribeline.config import Settings


def test_environment_sets_every_field(tmp_path):
    s = Settings.from_env({
        "SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_MODEL": "base", "SCRIBELINE_S3_ENDPOINT": "minio:9000",
        "SCRIBELINE_S3_ACCESS_KEY": "ak", "SCRIBELINE_S3_SECRET_KEY": "sk", "SCRIBELINE_S3_SECURE": "true",
        "SCRIBELINE_BATCH_SIZE": "16", "SCRIBELINE_PII_ENTITIES": "PERSON, EMAIL_ADDRESS",
    })
    assert (s.model, s.endpoint, s.s3_secure, s.batch_size) == ("base", "minio:9000", True, 16)
    assert s.pii_entities == ("PERSON", "EMAIL_ADDRESS")
    assert s.credentials() == ("ak", "sk") and not s.embedded
    assert s.warehouse.catalog_file == tmp_path / "warehouse" / "lake.sqlite"
    assert s.warehouse.data_path == f"{tmp_path}/warehouse/lake-data/"


def test_a_postgres_catalog_with_data_on_s3_keeps_its_secrets_out_of_sight(tmp_path):
    s = Settings.from_env({
        "SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_S3_ENDPOINT": "minio:9000", "SCRIBELINE_S3_ACCESS_KEY": "ak",
        "SCRIBELINE_S3_SECRET_KEY": "s3-secret-value", "SCRIBELINE_WAREHOUSE_DATA": "s3://scribeline-lake/",
        "SCRIBELINE_WAREHOUSE_CATALOG": "postgres:dbname=lake host=db user=scribeline password=pg-secret-value",
    })
    lake = s.warehouse
    assert lake.catalog_file is None and lake.data_path == "s3://scribeline-lake/" and lake.s3[1:3] == ("ak", "s3-secret-value")
    for shown in (str(lake), repr(lake)):  # what logs and `scribeline status` print
        assert "secret-value" not in shown and "dbname=lake host=db" in shown


def test_a_postgres_catalog_needs_a_data_path(tmp_path):
    s = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_WAREHOUSE_CATALOG": "postgres:dbname=lake"})
    with pytest.raises(ValueError, match="SCRIBELINE_WAREHOUSE_DATA"):
        s.warehouse


def test_a_config_file_gives_defaults_and_the_environment_wins(tmp_path):
    (tmp_path / "scribeline.toml").write_text('model = "small"\nbatch_size = 4\n')
    s = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_BATCH_SIZE": "2"})
    assert (s.model, s.batch_size) == ("small", 2)


def test_external_s3_without_keys_is_a_clear_error(tmp_path):
    s = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_S3_ENDPOINT": "minio:9000"})
    with pytest.raises(ValueError, match="SCRIBELINE_S3_ACCESS_KEY"):
        s.credentials()


def test_embedded_credentials_are_generated_once_and_private(tmp_path):
    s = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path)})
    first = s.credentials()
    assert first == s.credentials() and len(first[1]) >= 24
    assert stat.S_IMODE((tmp_path / "s3-credentials.json").stat().st_mode) == 0o600


def test_run_key_follows_content_and_transcript_relevant_settings(tmp_path):
    base = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_MODEL": "tiny.en"})
    sha = "ab" * 32
    same = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path / "other"), "SCRIBELINE_MODEL": "tiny.en",
                              "SCRIBELINE_BATCH_SIZE": "32"})
    assert base.run_key(sha) == same.run_key(sha)  # where and how fast do not change a transcript
    for change in ({"SCRIBELINE_MODEL": "base"}, {"SCRIBELINE_LANGUAGE": "de"}, {"SCRIBELINE_TASK": "translate"},
                   {"SCRIBELINE_PII_ENTITIES": "PERSON"}):
        other = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_MODEL": "tiny.en", **change})
        assert other.run_key(sha) != base.run_key(sha), change
    assert base.run_key("cd" * 32) != base.run_key(sha)


def test_narrowband_sources_get_their_own_beam_size(tmp_path):
    s = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path)})
    assert s.beam_for(8000) is None and s.beam_for(16000) is None  # greedy by default, as transcribe()
    s = Settings.from_env({"SCRIBELINE_DATA_DIR": str(tmp_path), "SCRIBELINE_NARROWBAND_BEAM_SIZE": "5"})
    assert s.beam_for(8000) == 5 and s.beam_for(16000) is None and s.beam_for(None) is None
