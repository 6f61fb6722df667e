"""Imperative shell: the I/O around the pure core, cut by job into sub-packages.

``common`` (files, paths, progress, the mappings folder), ``run`` (readers, the two engines, outputs),
``report`` (the study team's report), ``registry`` (exports and databases) and ``server`` (the FHIR client,
pull, push, sync, approval and undo). docs/development.md maps what each may import.
"""
