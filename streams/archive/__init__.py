"""Data versioning beside scoring: the archive lane (sealed segments), lineage and bit-for-bit replay."""
