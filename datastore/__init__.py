"""streamscore: datastore — sealed, content-addressed archives of the flow (data versioning)."""
