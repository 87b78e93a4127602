"""One module per stage. Each exposes a `Stage` subclass and `run(pipeline, ...)`, the library
function that the CLI command and the make target call."""
