"""Great Expectations Data Docs of the stored quality checks, for people who would rather look than query.

The pipeline validates in an in-memory context (it writes no files while it runs); every
expectation's result is stored per media in the warehouse's ``quality_checks``. This turns those
rows back into Great Expectations validation results, one per media, in a file context under
the data directory, and builds its Data Docs site there: ``<data_dir>/gx/uncommitted/data_docs/
local_site/index.html``. Building again rewrites the same pages (a media's identifier is its id).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from scribeline import warehouse
from scribeline.config import Settings

SUITE = "scribeline-quality"


def build(settings: Settings, limit: int = 100) -> Path:
    """Data Docs of the latest ``limit`` media's checks; returns the site's index.html."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (ExpectationSuiteIdentifier,
                                                                            ValidationResultIdentifier)
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if not settings.warehouse.exists():
        raise FileNotFoundError(f"no warehouse at {settings.warehouse}: run the pipeline first")
    rows = warehouse.query(settings.warehouse, """
        SELECT m.media_id, m.source_bucket, m.source_key, m.processed_at, m.needs_review, m.review_reasons,
               q.check_index, q.table_name, q.expectation, q.column_name, q.severity, q.success,
               q.element_count, q.unexpected_count, q.details
        FROM quality_checks q
        JOIN (SELECT * FROM media ORDER BY processed_at DESC LIMIT ?) m USING (media_id)
        ORDER BY m.processed_at, m.media_id, q.check_index""", [limit])
    context = gx.get_context(mode="file", project_root_dir=str(settings.data_dir))
    store = context.validation_results_store
    for media_id, checks in rows.groupby("media_id", sort=False):
        first = checks.iloc[0]
        results = []
        for c in checks.itertuples():
            kwargs = json.loads(c.details or "{}").get("kwargs", {})
            count, bad = int(c.element_count or 0), int(c.unexpected_count or 0)
            results.append(ExpectationValidationResult(
                success=bool(c.success),
                expectation_config=ExpectationConfiguration(
                    type=c.expectation, kwargs=kwargs, meta={"table": c.table_name, "severity": c.severity}),
                result={"element_count": count, "unexpected_count": bad,
                        "unexpected_percent": 100.0 * bad / count if count else 0.0}))
        when = first.processed_at.to_pydatetime().replace(tzinfo=dt.timezone.utc) if first.processed_at is not None else None
        # The store names files by the run: no "/" in it (the object's full name is in the page's meta).
        name = f"{first.source_bucket}: {first.source_key}".replace("/", " | ").replace("\\", " | ")
        run_id = RunIdentifier(run_name=name[:200], run_time=when)
        verdict = ExpectationSuiteValidationResult(
            success=not bool(first.needs_review), results=results, suite_name=SUITE,
            meta={"run_id": run_id, "media_id": media_id, "source": f"s3://{first.source_bucket}/{first.source_key}", "review_reasons": first.review_reasons,
                  "active_batch_definition": {"datasource_name": "scribeline-warehouse",
                                              "data_asset_name": first.source_key, "batch_definition_name": media_id}})
        store.set(ValidationResultIdentifier(ExpectationSuiteIdentifier(name=SUITE), run_id, media_id[:48]), verdict)
    site = context.build_data_docs()["local_site"]
    return Path(site.removeprefix("file://"))
