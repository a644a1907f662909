"""Task engine: state machine, sqlite store, supervisor and process control."""
