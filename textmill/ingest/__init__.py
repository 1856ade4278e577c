"""Ingestion: streaming readers, HTML extraction, charset detection and language id."""
