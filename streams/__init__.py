"""The streaming side of streamscore, by stage: kafka (clients) -> scoring (validate, score, build records) ->
routing -> engines (Faust agent, batch engine) -> capabilities beside scoring (drift, learning, archive) ->
worker (the root that wires them) -> cli. Imports only go down this list."""
