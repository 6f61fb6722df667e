-- which patients progressed, and when
SELECT subject_key, MIN(assessment_date) AS progressed_on
FROM current_assessments
WHERE response = 'PD'
GROUP BY subject_key
ORDER BY progressed_on;
