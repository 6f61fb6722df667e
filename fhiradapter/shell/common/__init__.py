"""Shared by every job of the shell: safe file writes, the output folder and its lock, progress bars, URLs,
and finding and loading the mappings folder. Imports nothing else of the shell."""
