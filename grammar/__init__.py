"""The feedback file language: grammar, parser, validator, reader and writer."""
