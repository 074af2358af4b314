"""roomlens core library: segmentation, embedding, vector index, catalog and the search service.

This package never imports `api` or `indexer`, and never imports FastAPI.
"""
