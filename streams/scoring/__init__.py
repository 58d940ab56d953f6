"""The transport-free scoring core: validate -> route -> score -> build the prediction and dead-letter records."""
