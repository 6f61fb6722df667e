"""Publishing the study itself as FHIR (``fhiradapter study``): its inputs read, a server's copies compared."""
