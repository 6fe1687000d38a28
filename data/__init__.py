"""Dataset schemas and loaders, packing/collation, and the FTibWorld generator."""
