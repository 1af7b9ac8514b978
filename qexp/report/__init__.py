"""Everything that turns a finished model or a folder of runs into numbers: sizes, records, tables."""
