"""Domain operations, one module per aggregate: typed records in, typed records out, never commit."""
