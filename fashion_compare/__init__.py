"""Cross-framework tools: lockstep training, parity figures, benchmarks and the comparison report. Imports both twins."""
