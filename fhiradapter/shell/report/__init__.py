"""The study team's report (HTML and Markdown): sections from the results, tables and figures."""
