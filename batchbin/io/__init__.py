"""Inputs and outputs: reading files, validating requests, OpenAI batch lines, the report's charts."""
