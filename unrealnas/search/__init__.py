"""Running a search: the resumable DARTS/SGAS loop and its run directory."""
