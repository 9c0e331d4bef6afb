"""PostgreSQL: tables, sink, symbol registry, migrations."""
