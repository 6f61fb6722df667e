"""Imperative shell: readers, mappings loader, pipeline and writers that perform the I/O around the core."""
