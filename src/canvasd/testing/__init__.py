"""Test doubles that ship with canvasd, because `canvasd bench --model fake` runs the benchmark
harness on them (no model, simulated cost). Not used when serving."""
