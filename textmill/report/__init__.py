"""Reports over dataset versions: markdown summaries (asset metadata, CLI) and, later, the data card."""
