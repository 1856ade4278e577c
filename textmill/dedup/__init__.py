"""Deduplication: exact text, URL and MinHash-LSH near duplicates, within and across crawls."""
