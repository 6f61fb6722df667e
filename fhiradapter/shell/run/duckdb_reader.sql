-- Pass one through DuckDB (fhiradapter/shell/run/duckdb_reader.py): one row per non-blank line of an NDJSON
-- file, in file order, saying whether the line is an Observation whose every field the typed decoding reads
-- has the JSON type fhiradapter/core/fhir_types.py gives it, with none of the elements that need the Python
-- mapper's detail (focus, components, contained, identifiers, value[x] other than valueQuantity, ...).
-- Such a line is mapped from the values below; every other line goes to the Python reader and mapper.
-- Every leaf is read as JSON text, so that its JSON type is known: a string starts with '"', a number with
-- '-' or a digit. Objects and lists are typed: a line where one is something else fails the query, and the
-- whole file is then read by the Python reader. {columns}, {codes} and {counted} are filled in by the Python module.
CREATE OR REPLACE TEMP MACRO is_str(j) AS (j IS NULL OR starts_with(j::VARCHAR, '"'));
CREATE OR REPLACE TEMP MACRO is_num(j) AS (j IS NULL OR left(j::VARCHAR, 1) IN ('-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'));
CREATE OR REPLACE TEMP MACRO text_of(j) AS (CASE WHEN starts_with(j::VARCHAR, '"') THEN (j::VARCHAR)[2:-2] END);
CREATE OR REPLACE TEMP MACRO plausible(j) AS (j IS NULL OR coalesce(abs(TRY_CAST(j::VARCHAR AS DOUBLE)) <= 1e12, false));
CREATE OR REPLACE TEMP MACRO codings_ok(cs) AS (
    coalesce(list_bool_and(list_transform(cs, lambda c: c IS NOT NULL AND is_str(c.system) AND is_str(c.code) AND is_str(c.display))), true)
);
CREATE OR REPLACE TEMP MACRO quantity_ok(q) AS (q IS NULL OR (is_num(q.value) AND is_str(q.unit) AND is_str(q.code)));
SELECT
    ordinality AS row_number,
    text_of(id) AS id,
    (
        resourceType::VARCHAR = '"Observation"'
        AND starts_with(id::VARCHAR, '"')
        AND (meta IS NULL OR (is_str(meta.versionId) AND is_str(meta.lastUpdated) AND codings_ok(meta.tag)))
        AND identifier IS NULL AND focus IS NULL AND component IS NULL AND contained IS NULL
        AND effectiveInstant IS NULL AND effectivePeriod IS NULL AND dataAbsentReason IS NULL
        AND valueInteger IS NULL AND valueCodeableConcept IS NULL AND valueString IS NULL AND valueBoolean IS NULL
        AND valueRange IS NULL AND valueRatio IS NULL AND valueSampledData IS NULL AND valueTime IS NULL
        AND valueDateTime IS NULL AND valuePeriod IS NULL
        AND starts_with(status::VARCHAR, '"')
        AND code IS NOT NULL AND codings_ok(code.coding) AND is_str(code.text)
        AND subject IS NOT NULL AND starts_with(subject.reference::VARCHAR, '"') AND is_str(subject.type)
        AND is_str(subject.display)
        AND (subject.identifier IS NULL OR (is_str(subject.identifier.system) AND is_str(subject.identifier.value)))
        AND starts_with(effectiveDateTime::VARCHAR, '"')
        -- docs/protocol.md §1 (fhir_json.local_date): the calendar date written, never shifted; a full day only
        AND regexp_matches(text_of(effectiveDateTime), '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T|$)')
        AND NOT starts_with(text_of(effectiveDateTime), '0000')
        AND TRY_CAST(left(text_of(effectiveDateTime), 10) AS DATE) IS NOT NULL
        AND regexp_full_match(text_of(id), '[A-Za-z0-9\-\.]{1,64}')
        AND regexp_full_match(text_of(subject.reference), 'Patient/[A-Za-z0-9\-\.]{1,64}')
        AND text_of(status) IN {counted}
        AND valueQuantity IS NOT NULL AND quantity_ok(valueQuantity) AND valueQuantity.value IS NOT NULL
        AND plausible(valueQuantity.value)
        AND coalesce(list_bool_and(list_transform(referenceRange, lambda r:
            r IS NOT NULL AND quantity_ok(r.low) AND quantity_ok(r.high) AND plausible(r.low.value)
            AND plausible(r.high.value))), true)
    ) AS fast,
    list_filter(
        list_transform(code.coding, lambda c: {codes}[text_of(c.system) || chr(31) || text_of(c.code)]), lambda x: x IS NOT NULL
    )[1] AS concept,
    text_of(status) AS status,
    text_of(subject.reference) AS subject,
    TRY_CAST(left(text_of(effectiveDateTime), 10) AS DATE) AS day,
    valueQuantity.value::VARCHAR AS value,
    text_of(valueQuantity.unit) AS unit,
    text_of(valueQuantity.code) AS unit_code,
    text_of(meta.versionId) AS version_id,
    text_of(meta.lastUpdated) AS last_updated,
    len(referenceRange) > 0 AS has_range,
    referenceRange[1].low.value::VARCHAR AS low,
    text_of(referenceRange[1].low.unit) AS low_unit,
    text_of(referenceRange[1].low.code) AS low_code,
    referenceRange[1].high.value::VARCHAR AS high,
    text_of(referenceRange[1].high.unit) AS high_unit,
    text_of(referenceRange[1].high.code) AS high_code
FROM read_ndjson(
    $path, columns = {columns}, format = 'newline_delimited', maximum_object_size = $limit
) WITH ORDINALITY
