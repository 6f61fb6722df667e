"""initial registry schema: history tables per run

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The view SQL is shared with the schema module; frozen here by name so this revision never changes meaning.
VIEWS = [
    "runs",
    "subjects",
    "eligibility_criteria",
    "assessments",
    "best_responses",
    "toxicities",
    "dose_actions",
    "outcomes",
    "cohort_summaries",
]


def view_sql(name: str) -> str:
    if name == "runs":
        return "CREATE VIEW current_runs AS SELECT * FROM runs WHERE superseded_by IS NULL"
    return (
        f"CREATE VIEW current_{name} AS SELECT t.*, r.study_id, r.as_of FROM {name} t "  # noqa: S608 - fixed names
        "JOIN runs r ON r.run_id = t.run_id WHERE r.superseded_by IS NULL"
    )


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="hash of the results and the identity mode"),
        sa.Column("study_id", sa.String(length=64), nullable=False, comment="protocol id (mappings/protocol.toml)"),
        sa.Column("as_of", sa.Date(), nullable=False, comment="evaluate --as-of"),
        sa.Column("adapter_version", sa.String(length=32), nullable=False),
        sa.Column("mappings_version", sa.String(length=32), nullable=False),
        sa.Column("mappings_sha256", sa.String(length=64), nullable=False),
        sa.Column("results_sha256", sa.String(length=64), nullable=False, comment="sha256 of results.json"),
        sa.Column("pseudonymised", sa.Boolean(), nullable=False),
        sa.Column(
            "key_id", sa.String(length=16), nullable=True, comment="names the pseudonymisation key without revealing it"
        ),
        sa.Column("input_files", sa.Integer(), nullable=False),
        sa.Column("records_read", sa.Integer(), nullable=False),
        sa.Column("records_used", sa.Integer(), nullable=False),
        sa.Column("records_rejected", sa.Integer(), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "superseded_by",
            sa.String(length=32),
            nullable=True,
            comment="the newer run for the same study, as-of and identity mode",
        ),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
        comment="one row per exported evaluate run",
    )
    op.create_table(
        "assessments",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("assessment_date", sa.Date(), nullable=True),
        sa.Column("study_day", sa.Integer(), nullable=True, comment="day 1 = index date"),
        sa.Column(
            "response", sa.String(length=2), nullable=True, comment="CR | PR | SD | PD | NE (docs/protocol.md §4)"
        ),
        sa.Column("spd_mm2", sa.Float(), nullable=True, comment="sum of products of diameters"),
        sa.Column("afp_ng_ml", sa.Float(), nullable=True),
        sa.Column("basis", sa.String(length=16), nullable=True),
        sa.Column("confirmed", sa.Boolean(), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=True, comment="dropped when pseudonymised"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key", "seq"),
    )
    op.create_table(
        "best_responses",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("best_response", sa.String(length=2), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True, comment="dropped when pseudonymised"),
        sa.Column("response_start", sa.Date(), nullable=True),
        sa.Column("response_end", sa.Date(), nullable=True),
        sa.Column("response_days", sa.Integer(), nullable=True),
        sa.Column("response_censored", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key"),
    )
    op.create_table(
        "cohort_summaries",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("n_treated", sa.Integer(), nullable=True),
        sa.Column("n_screened_only", sa.Integer(), nullable=True),
        sa.Column("cr", sa.Integer(), nullable=True),
        sa.Column("pr", sa.Integer(), nullable=True),
        sa.Column("sd", sa.Integer(), nullable=True),
        sa.Column("pd", sa.Integer(), nullable=True),
        sa.Column("ne", sa.Integer(), nullable=True),
        sa.Column("orr_count", sa.Integer(), nullable=True),
        sa.Column("orr_n", sa.Integer(), nullable=True),
        sa.Column("orr_rate", sa.Float(), nullable=True),
        sa.Column("orr_ci_low", sa.Float(), nullable=True),
        sa.Column("orr_ci_high", sa.Float(), nullable=True),
        sa.Column("dcr_count", sa.Integer(), nullable=True),
        sa.Column("dcr_n", sa.Integer(), nullable=True),
        sa.Column("dcr_rate", sa.Float(), nullable=True),
        sa.Column("dcr_ci_low", sa.Float(), nullable=True),
        sa.Column("dcr_ci_high", sa.Float(), nullable=True),
        sa.Column("ci_method", sa.String(length=32), nullable=True),
        sa.Column("median_os_days", sa.Float(), nullable=True, comment="Kaplan-Meier; empty = not reached"),
        sa.Column("os_ci_low", sa.Float(), nullable=True),
        sa.Column("os_ci_high", sa.Float(), nullable=True),
        sa.Column("os_events", sa.Integer(), nullable=True),
        sa.Column("median_treatment_days", sa.Float(), nullable=True),
        sa.Column("treatment_days_min", sa.Integer(), nullable=True),
        sa.Column("treatment_days_max", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "dose_actions",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action_date", sa.Date(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=True, comment="interrupt | discontinue"),
        sa.Column("term", sa.String(length=48), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key", "seq"),
    )
    op.create_table(
        "eligibility_criteria",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("criterion_id", sa.String(length=48), nullable=False, comment="docs/protocol.md §2 criterion id"),
        sa.Column("status", sa.String(length=16), nullable=False, comment="met | not_met | unknown"),
        sa.Column("value", sa.Text(), nullable=True, comment="the value judged (JSON when structured)"),
        sa.Column("detail", sa.Text(), nullable=True, comment="dropped when pseudonymised"),
        sa.Column("evidence", sa.Text(), nullable=True, comment="FHIR references used; dropped when pseudonymised"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key", "criterion_id"),
    )
    op.create_table(
        "outcomes",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("os_days", sa.Integer(), nullable=True, comment="death or censoring date - index date + 1"),
        sa.Column("os_event", sa.Boolean(), nullable=False, comment="true = death"),
        sa.Column("os_end_date", sa.Date(), nullable=True),
        sa.Column("os_basis", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key"),
    )
    op.create_table(
        "subjects",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("sex", sa.String(length=16), nullable=True),
        sa.Column("birth_date", sa.String(length=10), nullable=True, comment="empty when pseudonymised"),
        sa.Column(
            "age_at_index",
            sa.Integer(),
            nullable=True,
            comment="completed years at the index date (screening if untreated)",
        ),
        sa.Column("screening_date", sa.Date(), nullable=True),
        sa.Column(
            "eligibility_status", sa.String(length=16), nullable=True, comment="eligible | ineligible | undetermined"
        ),
        sa.Column("child_pugh_score", sa.Integer(), nullable=True),
        sa.Column("child_pugh_class", sa.String(length=1), nullable=True),
        sa.Column("treated", sa.Boolean(), nullable=False),
        sa.Column("index_date", sa.Date(), nullable=True, comment="first study thalidomide dose"),
        sa.Column("last_dose_date", sa.Date(), nullable=True),
        sa.Column("treatment_days", sa.Integer(), nullable=True),
        sa.Column(
            "research_subject_status", sa.String(length=32), nullable=True, comment="R4 ResearchSubject.status code"
        ),
        sa.Column("issues", sa.Integer(), nullable=False, comment="data-quality findings (see results.json)"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key"),
    )
    op.create_table(
        "toxicities",
        sa.Column("run_id", sa.String(length=32), nullable=False, comment="the export run"),
        sa.Column("subject_key", sa.String(length=64), nullable=False, comment="Patient id, or its pseudonym (HMAC)"),
        sa.Column("term", sa.String(length=48), nullable=False, comment="CTC v2.0 term key"),
        sa.Column("meddra", sa.String(length=16), nullable=True, comment="MedDRA LLT code"),
        sa.Column("worst_grade", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=True, comment="reported | lab | derived"),
        sa.Column("first_date", sa.String(length=10), nullable=True),
        sa.Column("criteria", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
        ),
        sa.PrimaryKeyConstraint("run_id", "subject_key", "term"),
    )

    # Current-state views: rows of runs not superseded by a newer run (same study, as-of and identity mode).
    for name in VIEWS:
        op.execute(view_sql(name))


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW current_{name}")
    op.drop_table("toxicities")
    op.drop_table("subjects")
    op.drop_table("outcomes")
    op.drop_table("eligibility_criteria")
    op.drop_table("dose_actions")
    op.drop_table("cohort_summaries")
    op.drop_table("best_responses")
    op.drop_table("assessments")
    op.drop_table("runs")
