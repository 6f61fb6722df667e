"""One evaluate run: the readers of FHIR files, the local and Spark engines, the spill, and the outputs a run
writes (results, rejects, clinical data, write-back, manifest)."""
