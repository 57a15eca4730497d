"""The name of the preprocessing chain, kept apart from the chain itself so that a reader
of cached images checks it without loading pydicom."""

# Change whenever a step's output changes, so that cached arrays are rebuilt.
PIPELINE_VERSION = "2"
