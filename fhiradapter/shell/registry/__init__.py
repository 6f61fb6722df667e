"""Feeding registries and research databases: the export (tables and SDTM; SQL, CSV, Parquet), the
database connection and the schema migrations."""
