"""The store: Parquet segments and their manifest, the DuckDB views over them, the SQL guard, the object-storage mirror and the lake."""
