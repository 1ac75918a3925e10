"""The experiment folder: where it lives (a path or a URI), its file names, search.json, the
trials and history tables, and what is computed after the search (attribution, test split)."""
