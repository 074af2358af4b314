"""Merchant features on top of the search core: API keys, the search log, admin queries
about the catalog and the index, near-duplicates. Imports `search/`; `search/` never imports it."""
