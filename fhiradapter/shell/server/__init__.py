"""Talking to a FHIR server: the client and its auth, pull (search and Bulk Data), push, sync and its store,
the approval of what is written and its undo."""
