"""The HTTP API's request and response models, separate from the pipeline's events and tables:
one module per resource, shared field types in `common`.

Prices, quantities and volumes are decimal strings, exactly as stored (never floats); times are
epoch milliseconds, as in the table. The pipeline's status is `pipeline.core.status` itself.
"""
