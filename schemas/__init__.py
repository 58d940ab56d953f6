"""The data contracts of the flow: Avro ``.avsc`` schemas and their pydantic twins, codecs at the wire edge (errors
as data: ``InvalidEvent``), strict decoding, feature validation in the model's dtype, dead letters, route specs
and drift thresholds."""
