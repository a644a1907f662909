"""Command-line front ends: twparse, twrun, twctl. Parsing, formatting, exit codes only."""
